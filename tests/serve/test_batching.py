"""The scheduler: rows of different users' adapters in one forward pass (each row as if it ran
alone), hot swap on promote and rollback, cancellation on disconnect, backpressure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("openai")

from live import add_user, random_adapter, serve, two_users  # noqa: E402,F401 - fixtures

SUBJECT = "To: list@example.org\nfix: the cache index is read twice"
GREEDY = dict(max_tokens=8, temperature=0, extra_body={"ignore_eos": True})


def ask(live, model: str, **kw):
    return live.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": SUBJECT}], **(GREEDY | kw))


def alone(models, adapter: str | None, tokens: int = 8) -> str:
    """What transformers' own generate writes for the prompt with one adapter (or none): PEFT's
    adapter on a base of its own, whichever way the server applies adapters."""
    import torch
    from peft import PeftModel

    from idiolect import adapters
    from idiolect.bases import load as bases
    from idiolect.compile.prompts import prompt_text

    model, tok = bases.load(models.ref)
    if adapter is not None:
        folder = adapters.get(models.read_home().conn, adapter)["path"]
        model = PeftModel.from_pretrained(model, folder).eval()
    enc = tok(prompt_text(tok, "fix: the cache index is read twice", ["list@example.org"]),
              return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, repetition_penalty=1.1,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_two_users_and_the_base_share_one_batch_each_row_with_its_own_adapter(serve, two_users):
    live = serve(max_batch=3, max_wait_ms=5000)  # the batch starts when its third row arrives
    models = ["idiolect/ada", "idiolect/bob", "tiny"]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda m: ask(live, m), models))
    s = live.stats
    assert s["batches"] == 1 and s["last_batch"] == {"rows": 3, "adapters": 2, "base_rows": 1}
    assert s["max_adapters_in_batch"] == 2
    texts = [a.choices[0].message.content for a in answers]
    assert [a.system_fingerprint for a in answers] == [two_users["ada"], two_users["bob"], "tiny"]
    assert len(set(texts)) == 3
    # each row wrote what its adapter writes alone (transformers' generate, one row, no padding)
    served = live.app.state.batcher.models
    assert texts == [alone(served, two_users["ada"]), alone(served, two_users["bob"]),
                     alone(served, None)]


def test_hot_swap_on_promote_keeps_in_flight_rows_on_the_old_adapter(serve, two_users, home):
    from idiolect import adapters

    live = serve()
    old = two_users["ada"]
    before = ask(live, "idiolect/ada")
    assert before.system_fingerprint == old
    stream = live.client.chat.completions.create(
        model="idiolect/ada", messages=[{"role": "user", "content": SUBJECT}], stream=True,
        max_tokens=400, temperature=0, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)
    new = random_adapter(home, "ada", "tiny", seed=5)  # promoted while the stream runs
    assert live.stats["forward_passes"] < 2 + 400  # (the two requests') still decoding
    rest = list(chunks)
    assert {c.system_fingerprint for c in [first, *rest]} == {old}  # in flight: the old one
    assert rest[-1].choices[0].finish_reason == "length"
    after = ask(live, "idiolect/ada")
    assert after.system_fingerprint == new
    assert after.choices[0].message.content != before.choices[0].message.content
    assert set(live.app.state.batcher.models.loaded) == {new, two_users["bob"]}  # old unloaded
    adapters.rollback(home.conn, "ada", "tiny")
    back = ask(live, "idiolect/ada")
    assert back.system_fingerprint == old
    assert back.choices[0].message.content == before.choices[0].message.content


def wait_for(pred, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_client_that_disconnects_leaves_the_batch(serve, two_users):
    live = serve()
    with live.client.chat.completions.create(
            model="idiolect/ada", messages=[{"role": "user", "content": SUBJECT}], stream=True,
            max_tokens=400, temperature=0, extra_body={"ignore_eos": True}) as stream:
        for i, _chunk in enumerate(stream):
            if i == 2:
                break
    wait_for(lambda: live.stats["cancelled_rows"] == 1, "the row to be cancelled")
    assert live.stats["tokens"] < 400
    assert ask(live, "idiolect/bob").choices[0].finish_reason == "length"  # still serving


def test_a_full_queue_answers_429_with_retry_after(serve, two_users):
    import openai

    live = serve(max_batch=2, max_queue=1, max_wait_ms=1500)
    result = {}
    waiting = threading.Thread(target=lambda: result.update(r=ask(live, "idiolect/ada")))
    waiting.start()
    wait_for(lambda: live.stats["queued_rows"] == 1, "the first request to queue")
    with pytest.raises(openai.RateLimitError) as e:
        ask(live, "idiolect/bob")
    assert e.value.response.status_code == 429
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.body["code"] == "rate_limit_exceeded"
    waiting.join(timeout=30)
    assert result["r"].choices[0].finish_reason == "length"
    assert live.stats["rejected"] == 1


def test_group_by_adapter_batches_one_adapter_at_a_time_in_arrival_order(serve, two_users):
    live = serve(max_batch=4, max_wait_ms=3000, group_by_adapter=True)
    batcher = live.app.state.batcher
    seen = []
    generate = batcher._generate
    batcher._generate = lambda jobs: (seen.append([j.target.model for j in jobs]),
                                      generate(jobs))[1]
    order = ["idiolect/ada", "idiolect/bob", "idiolect/ada", "tiny", "idiolect/bob"]
    with ThreadPoolExecutor(len(order)) as pool:
        futures = []
        for model in order:  # queued in this order (each waits for the previous to be queued)
            futures.append(pool.submit(ask, live, model))
            wait_for(lambda: batcher.queued_rows() == len(futures) or seen, "the request to queue")
        answers = [f.result() for f in futures]
    assert all(a.choices[0].finish_reason == "length" for a in answers)
    # one adapter a batch, the oldest job's; the others keep their place
    assert seen == [["idiolect/ada", "idiolect/ada"], ["idiolect/bob", "idiolect/bob"], ["tiny"]]
    assert live.stats["max_adapters_in_batch"] == 1
    # the same rows write the same text as in a mixed batch (each row as if alone)
    served = batcher.models
    assert answers[1].choices[0].message.content == alone(served, two_users["bob"])


def test_group_by_adapter_is_off_by_default():
    from idiolect.serve.batcher import BatchConfig

    assert BatchConfig().group_by_adapter is False


def stream_started(pool, live, model: str = "idiolect/ada", tokens: int = 300):
    """A greedy stream of ``tokens`` (its chunks' future, in ``pool``), once its batch runs."""
    passes = live.stats["forward_passes"]
    stream = pool.submit(lambda: list(live.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": SUBJECT}], stream=True,
        max_tokens=tokens, temperature=0, extra_body={"ignore_eos": True})))
    wait_for(lambda: live.stats["forward_passes"] > passes, f"{model}'s batch to start")
    return stream


def hold_decoding_until_queued(batcher, rows: int = 1) -> None:
    """The next decode step (a forward pass with a cache) waits until ``rows`` rows are queued,
    once: the late requests of a test arrive while its batch is decoding, whatever the load."""
    forward, held = batcher.models.forward, []

    def wait_then_forward(names, **inputs):
        if inputs.get("past_key_values") is not None and inputs["input_ids"].shape[1] == 1 \
                and not held:
            held.append(True)
            wait_for(lambda: batcher.queued_rows() >= rows, f"{rows} rows to queue")
        return forward(names, **inputs)
    batcher.models.forward = wait_then_forward


def test_a_request_that_arrives_mid_batch_joins_it_and_writes_what_it_writes_alone(
        serve, two_users):
    live = serve(max_batch=4, max_wait_ms=0)
    seeded = dict(max_tokens=12, temperature=1.0, top_p=0.9, seed=7,
                  extra_body={"ignore_eos": True})
    # alone first: bob's seeded sample and ada's greedy text, each in a batch of its own
    bob_alone = ask(live, "idiolect/bob", **seeded).choices[0].message.content
    ada_alone = ask(live, "idiolect/ada", max_tokens=300).choices[0].message.content
    before = live.stats
    assert before["joined_rows"] == 0
    hold_decoding_until_queued(live.app.state.batcher)
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(lambda: list(live.client.chat.completions.create(
            model="idiolect/ada", messages=[{"role": "user", "content": SUBJECT}], stream=True,
            max_tokens=300, temperature=0, extra_body={"ignore_eos": True})))
        wait_for(lambda: live.stats["forward_passes"] > before["forward_passes"],
                 "ada's batch to start")
        bob = ask(live, "idiolect/bob", **seeded)
        rest = stream.result()
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    s = live.stats
    assert s["joined_rows"] == 1 and s["batches"] == before["batches"] + 1  # no batch of its own
    assert s["max_rows_in_batch"] == 2 and s["max_adapters_in_batch"] == 2
    assert bob.choices[0].message.content == bob_alone
    assert text == ada_alone  # the running row is not disturbed by the join
    assert rest[-1].choices[0].finish_reason == "length"


def test_rows_join_only_while_the_batch_has_room(serve, two_users):
    live = serve(max_batch=2, max_wait_ms=0)
    long = dict(max_tokens=80, temperature=0, extra_body={"ignore_eos": True})
    with ThreadPoolExecutor(3) as pool:
        hold_decoding_until_queued(live.app.state.batcher)
        first = pool.submit(ask, live, "idiolect/ada", n=2, **long)  # fills the batch
        wait_for(lambda: live.stats["forward_passes"] >= 1, "the first batch to start")
        late = pool.submit(ask, live, "idiolect/bob")
        answers = [first.result(), late.result()]
    s = live.stats
    assert s["joined_rows"] == 0 and s["batches"] == 2 and s["max_rows_in_batch"] == 2
    assert answers[1].choices[0].message.content == alone(live.app.state.batcher.models,
                                                          two_users["bob"])


@pytest.mark.parametrize("order", [("idiolect/ada", "idiolect/bob"),
                                   ("idiolect/bob", "idiolect/ada")], ids=["own-first", "other-first"])
def test_group_by_adapter_joins_only_its_own_adapter_and_never_past_another(serve, two_users,
                                                                            order):
    live = serve(max_batch=4, max_wait_ms=0, group_by_adapter=True)
    long = dict(max_tokens=80, temperature=0, extra_body={"ignore_eos": True})
    hold_decoding_until_queued(live.app.state.batcher, rows=2)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(ask, live, "idiolect/ada", **long)
        wait_for(lambda: live.stats["forward_passes"] >= 1, "the first batch to start")
        later = []
        for i, model in enumerate(order):
            later.append(pool.submit(ask, live, model))
            # queued, or (the second) already released the held step, which waits for both
            wait_for(lambda: live.stats["queued_rows"] == i + 1
                     or live.stats["forward_passes"] >= 2, f"{model} to queue")
        answers = {m: f.result() for m, f in zip(order, later)}
        first.result()
    s = live.stats
    # ada's second job joins ada's batch only when no bob job queued before it
    assert s["joined_rows"] == (1 if order[0] == "idiolect/ada" else 0)
    assert s["max_adapters_in_batch"] == 1
    served = live.app.state.batcher.models
    assert answers["idiolect/ada"].choices[0].message.content == alone(served, two_users["ada"])
    assert answers["idiolect/bob"].choices[0].message.content == alone(served, two_users["bob"])


LONG = SUBJECT + " because" + " the index and the cache disagree" * 12


@pytest.mark.parametrize("first_prompt,late_prompt,first_tokens,late_tokens", [
    (SUBJECT, LONG, 300, 8),    # the newcomer is wider: the running rows are padded
    (LONG, SUBJECT, 120, 300),  # the running row is wider; it leaves and the padding is cut
], ids=["newcomer-wider", "running-wider-then-cut"])
def test_joined_rows_of_other_widths_write_what_they_write_alone(
        serve, two_users, first_prompt, late_prompt, first_tokens, late_tokens):
    live = serve(max_batch=4, max_wait_ms=0)

    def req(model, content, tokens, stream=False):
        return live.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], stream=stream,
            max_tokens=tokens, temperature=0, extra_body={"ignore_eos": True})

    first_alone = req("idiolect/ada", first_prompt, first_tokens).choices[0].message.content
    late_alone = req("idiolect/bob", late_prompt, late_tokens).choices[0].message.content
    hold_decoding_until_queued(live.app.state.batcher)
    passes = live.stats["forward_passes"]
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(lambda: list(req("idiolect/ada", first_prompt, first_tokens,
                                              stream=True)))
        wait_for(lambda: live.stats["forward_passes"] > passes, "ada's batch to start")
        late = req("idiolect/bob", late_prompt, late_tokens)
        chunks = stream.result()
    first = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert live.stats["joined_rows"] == 1
    assert late.choices[0].message.content == late_alone
    assert first == first_alone


@pytest.fixture
def sliding_base(home, tiny_model_dir, tmp_path) -> str:
    """The tiny model as a Mistral whose attention looks back 12 tokens: a cache of sliding-window
    layers (gemma3's are, five in six), which keep their last tokens only."""
    import json
    import shutil

    from idiolect.bases.load import FINGERPRINT_FILE, add_local

    folder = tmp_path / "tiny-sliding"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns(FINGERPRINT_FILE))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=12)
    (folder / "config.json").write_text(json.dumps(config))
    add_local(home, "tiny-sliding", folder)
    return "tiny-sliding"


def test_a_row_that_leaves_a_sliding_window_batch_does_not_cut_the_others_cache(
        serve, sliding_base):
    live = serve(base=sliding_base, max_batch=2, max_wait_ms=0)

    def req(content, tokens):
        return live.client.chat.completions.create(
            model=sliding_base, messages=[{"role": "user", "content": content}],
            max_tokens=tokens, temperature=0, extra_body={"ignore_eos": True})

    short_alone = req(SUBJECT, 40).choices[0].message.content
    long_alone = req(LONG, 4).choices[0].message.content
    live.app.state.batcher.cfg.max_wait_ms = 5000  # the next batch starts with both rows
    with ThreadPoolExecutor(2) as pool:
        short = pool.submit(req, SUBJECT, 40)
        wait_for(lambda: live.stats["queued_rows"] == 1, "the first request to queue")
        long = pool.submit(req, LONG, 4)  # the wider row leaves first: the short one's
        texts = [f.result().choices[0].message.content for f in (short, long)]  # padding stays
    s = live.stats
    assert s["batches"] == 3 and s["max_rows_in_batch"] == 2 and s["joined_rows"] == 0
    assert texts == [short_alone, long_alone]


def hold_decoding(batcher) -> threading.Event:
    """The next decode step (a forward pass with a cache) waits until the event returned is set,
    once."""
    forward, release, held = batcher.models.forward, threading.Event(), []

    def wait_then_forward(names, **inputs):
        if inputs.get("past_key_values") is not None and inputs["input_ids"].shape[1] == 1 \
                and not held:
            held.append(True)
            if not release.wait(20):
                raise AssertionError("the test did not release the decode step")
        return forward(names, **inputs)
    batcher.models.forward = wait_then_forward
    return release


@pytest.mark.parametrize("lora", ["stacked", "peft"])
def test_a_job_whose_adapter_was_replaced_while_it_queued_joins_on_it(
        serve, two_users, home, lora):
    live = serve(max_batch=4, max_wait_ms=0, lora=lora)
    batcher = live.app.state.batcher
    bob_alone = ask(live, "idiolect/bob").choices[0].message.content
    ada_alone = ask(live, "idiolect/ada", max_tokens=300).choices[0].message.content
    release = hold_decoding(batcher)
    with ThreadPoolExecutor(2) as pool:
        stream = stream_started(pool, live)
        bob = pool.submit(ask, live, "idiolect/bob")  # resolved to bob's adapter now
        wait_for(lambda: batcher.queued_rows() == 1, "bob to queue")
        random_adapter(home, "bob", "tiny", seed=9)  # promoted while bob's job waits
        release.set()
        answer, rest = bob.result(), stream.result()
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert live.stats["joined_rows"] == 1 and live.stats["failed_batches"] == 0
    assert answer.system_fingerprint == two_users["bob"]
    assert answer.choices[0].message.content == bob_alone  # on the adapter it was queued for
    assert text == ada_alone
    wait_for(lambda: two_users["bob"] not in batcher.models.loaded, "the old adapter to go")


def test_a_joining_job_whose_prefill_fails_gets_the_error_and_the_running_rows_go_on(
        serve, two_users):
    import openai

    live = serve(max_batch=4, max_wait_ms=0)
    batcher = live.app.state.batcher
    ada_alone = ask(live, "idiolect/ada", max_tokens=300).choices[0].message.content
    forward = batcher.models.forward

    def bob_fails_to_prefill(names, **inputs):
        if inputs.get("past_key_values") is None and two_users["bob"] in names:
            raise RuntimeError("out of memory (a test's)")
        return forward(names, **inputs)
    batcher.models.forward = bob_fails_to_prefill
    hold_decoding_until_queued(batcher)
    with ThreadPoolExecutor(1) as pool:
        stream = stream_started(pool, live)
        with pytest.raises(openai.InternalServerError):
            ask(live, "idiolect/bob")
        rest = stream.result()
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert text == ada_alone and rest[-1].choices[0].finish_reason == "length"
    s = live.stats
    assert s["failed_batches"] == 1 and s["joined_rows"] == 0 and s["batches"] == 2
    batcher.models.forward = forward
    assert ask(live, "idiolect/bob").choices[0].finish_reason == "length"  # still serving


def test_a_batch_that_fails_after_a_joined_job_finished_reports_only_to_its_running_jobs(
        serve, two_users, monkeypatch):
    from idiolect.serve.batcher import Job

    live = serve(max_batch=4, max_wait_ms=0)
    batcher = live.app.state.batcher
    errors, emit = [], Job.emit

    def record(job, *event):
        if event[0] == "error":
            errors.append(job.target.model)
        emit(job, *event)
    monkeypatch.setattr(Job, "emit", record)
    forward, widths = batcher.models.forward, []

    def fail_once_bob_left(names, **inputs):
        if inputs.get("past_key_values") is not None:
            widths.append(len(names))
            if widths[-1] == 1 and 2 in widths:  # bob joined, then finished: ada is alone again
                raise RuntimeError("a test's failure")
        return forward(names, **inputs)
    batcher.models.forward = fail_once_bob_left
    hold_decoding_until_queued(batcher)
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(lambda: list(live.client.chat.completions.create(
            model="idiolect/ada", messages=[{"role": "user", "content": SUBJECT}], stream=True,
            max_tokens=300, temperature=0, extra_body={"ignore_eos": True})))
        wait_for(lambda: live.stats["forward_passes"] >= 1, "ada's batch to start")
        bob = ask(live, "idiolect/bob")
        with pytest.raises(Exception):
            stream.result()
    assert bob.choices[0].finish_reason == "length" and live.stats["joined_rows"] == 1
    assert errors == ["idiolect/ada"]  # not bob's finished job too


def test_with_join_off_a_request_that_arrives_mid_batch_waits_for_the_next_one(serve, two_users):
    live = serve(max_batch=4, max_wait_ms=0, join=False)
    hold_decoding_until_queued(live.app.state.batcher)
    with ThreadPoolExecutor(1) as pool:
        stream = stream_started(pool, live, tokens=40)
        bob = ask(live, "idiolect/bob")
        stream.result()
    s = live.stats
    assert s["joined_rows"] == 0 and s["batches"] == 2 and s["max_rows_in_batch"] == 1
    assert bob.choices[0].message.content == alone(live.app.state.batcher.models,
                                                   two_users["bob"])
