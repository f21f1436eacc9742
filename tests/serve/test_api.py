"""The OpenAI endpoints through the official `openai` client against a live server: the model
list, chat and text completions, streamed and not, the usual sampling fields."""

from __future__ import annotations

import pytest

pytest.importorskip("openai")

from live import serve, two_users  # noqa: E402,F401 - fixtures

SUBJECT = "To: list@example.org\nfix: the cache index is read twice"


def test_models_lists_the_base_and_each_user_with_an_active_adapter(serve, two_users, home):
    from live import add_user

    add_user(home, "cyd")  # a user without an adapter is no model
    live = serve()
    ids = [m.id for m in live.client.models.list().data]
    assert ids == ["tiny", "idiolect/ada", "idiolect/bob"]
    assert live.client.models.retrieve("idiolect/ada").owned_by == "ada"


def test_chat_completion_answers_with_the_users_adapter(serve, two_users):
    live = serve()
    r = live.client.chat.completions.create(
        model="idiolect/ada", messages=[{"role": "system", "content": "ignored"},
                                        {"role": "user", "content": SUBJECT}],
        max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.model == "idiolect/ada"
    assert r.system_fingerprint == two_users["ada"]
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 10
    again = live.client.chat.completions.create(
        model="idiolect/ada", messages=[{"role": "user", "content": SUBJECT}], max_tokens=12,
        temperature=0, extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == r.choices[0].message.content  # greedy: same
    base = live.client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": SUBJECT}], max_tokens=12,
        temperature=0, extra_body={"ignore_eos": True})
    assert base.system_fingerprint == "tiny"
    assert base.choices[0].message.content != r.choices[0].message.content


def test_a_request_is_idiolects_prompt_subject_and_recipients():
    from idiolect.serve.schemas import subject_and_recipients

    assert subject_and_recipients("To: a@b, c@d\nSubject: fix: x\n\nmore") == (
        "fix: x more", ["a@b", "c@d"])
    assert subject_and_recipients("just a subject") == ("just a subject", [])


def test_streaming_chat_sends_deltas_then_done(serve, two_users):
    live = serve()
    kwargs = dict(model="idiolect/bob", messages=[{"role": "user", "content": SUBJECT}],
                  max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    whole = live.client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(live.client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_raw_sse_frames_end_with_done(serve, two_users):
    import httpx

    live = serve()
    with httpx.stream("POST", live.url + "/v1/completions", json={
            "model": "idiolect/ada", "prompt": SUBJECT, "max_tokens": 4, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"


def test_completions_with_n_seed_and_stop(serve, two_users):
    live = serve()
    kw = dict(model="idiolect/ada", prompt=SUBJECT, max_tokens=16, temperature=1.0, top_p=0.95,
              seed=7, n=3, extra_body={"ignore_eos": True})
    r = live.client.completions.create(**kw)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.text for c in r.choices]
    assert live.client.completions.create(**kw).choices[1].text == texts[1]  # seeded
    assert len(set(texts)) > 1  # each choice samples on its own
    # a stop string taken from the text itself ends it just before, with reason "stop"
    probe = texts[0]
    stop = probe[len(probe) // 2:len(probe) // 2 + 2]
    cut = live.client.completions.create(**kw | {"n": 1, "stop": [stop]}).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert probe.startswith(cut.text)
    streamed = "".join(c.choices[0].text for c in live.client.completions.create(
        **kw | {"n": 1, "stop": stop, "stream": True}) if c.choices)
    assert streamed == cut.text


def test_an_adapter_without_shots_is_known_after_its_first_prompt(two_users, home, tiny_base):
    """Its first prompt reads its recipe (off the event loop); later ones skip the thread hop."""
    from idiolect.serve.models import ServedModels

    models = ServedModels(home, tiny_base)
    ada = models.resolve("idiolect/ada")
    assert models.without_shots(models.resolve(tiny_base)) and not models.without_shots(ada)
    assert models.shots(ada, "fix: cache") == []
    assert models.without_shots(ada) and not models.without_shots(models.resolve("idiolect/bob"))


def test_a_row_that_writes_the_prompts_own_words_ends_before_them(tiny_model_dir):
    """The server's rows stop where a body goes on into its prompt's instruction, as
    ``generate_bodies`` cuts it: a client never sees idiolect's prompt in a completion."""
    import asyncio

    from transformers import AutoTokenizer

    from idiolect.serve.batcher import BatchConfig, Job, Row
    from idiolect.serve.schemas import CompletionRequest, sampling

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    s = sampling(CompletionRequest(model="idiolect/ada", prompt="fix: x", stop="zz",
                                   max_tokens=64), BatchConfig(), 16)
    assert s.stop == ("zz",) and len(s.echoes) == 2
    assert not sampling(CompletionRequest(model="idiolect/ada", prompt="fix: x", max_tokens=64,
                                          ignore_eos=True), BatchConfig(), 16).echoes
    loop = asyncio.new_event_loop()
    events: asyncio.Queue = asyncio.Queue()
    row = Row(Job(None, [], s, 1, loop, events), 0, tok, set())
    text = "Keep it short.\n\nWrite the body of this message in my own voice.\nTo: x"
    reasons = []
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        reasons.append(row.push(t))
        if reasons[-1]:
            break
    loop.run_until_complete(asyncio.sleep(0))
    sent = ""
    while not events.empty():
        sent += events.get_nowait()[2]
    loop.close()
    assert reasons[-1] == "stop" and sent == "Keep it short."  # without the blank line
