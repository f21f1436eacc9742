"""bench/levers.py --resume: a long run continued later keeps only rows scored the same way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _results(path: Path, config: dict, users: list[str]) -> None:
    path.write_text(json.dumps({
        "run_info": {"name": path.stem, "started": "2026-12-04T08:00:00Z", "git": "abc",
                     "git_dirty": False, "status": "partial", "config": config},
        "meta_info": {"cpu": {"model": "AMD EPYC", "cores": 2}},
        "rows": [{"user": u, "settings": {}} for u in users]}))


def test_resume_keeps_rows_and_records_the_earlier_run(tmp_path):
    from levers import SCORING_KEYS, resumed

    config = {k: f"v-{k}" for k in SCORING_KEYS} | {"users": "a,b"}
    path = tmp_path / "levers_x.json"
    _results(path, config, ["a", "b"])
    rows, earlier = resumed(path, config | {"users": "c"})  # other users: not scoring
    assert [r["user"] for r in rows] == ["a", "b"]
    assert all(r["run_started"] == "2026-12-04T08:00:00Z" for r in rows)
    assert earlier[0]["git"] == "abc" and earlier[0]["cpu"]["model"] == "AMD EPYC"
    assert resumed(tmp_path / "absent.json", config) == ([], [])


@pytest.mark.parametrize("key", ["recipe", "settings", "fit_tokens", "reader"])
def test_resume_refuses_rows_scored_another_way(tmp_path, key):
    from levers import SCORING_KEYS, resumed

    config = {k: f"v-{k}" for k in SCORING_KEYS}
    path = tmp_path / "levers_x.json"
    _results(path, config, ["a"])
    with pytest.raises(SystemExit, match=rf"levers_x.json: cannot resume.*{key}"):
        resumed(path, config | {key: "other"})


def test_summary_pairs_subject_overlap_when_every_row_has_it():
    from levers import summary

    def setting(ap, fit, ov):
        return {"authorship_probability": ap, "fingerprint_distance": 1.0,
                "subject_fit": {"score": fit}, "subject_overlap": {"score": ov},
                "novelty": {"verbatim": 0, "flagged": 0}, "generate_cpu_s": 1.0}

    rows = [{"user": u, "calibration": {"authorship_probability": {"ceiling": 0.5},
                                        "fingerprint_distance": {"floor": 1.5}},
             "real_subject_fit": {"score": 0.5}, "real_subject_overlap": {"score": 0.2},
             "settings": {"s x1": setting(0.2, 0.3, 0.1 * i),
                          "s x4 sense": setting(0.3, 0.6, 0.1 * i + 0.2)}}
            for i, u in enumerate("abc")]
    s = summary(rows)
    assert s["s x1"]["subject_overlap"]["mean"] == pytest.approx(0.1)
    assert s["s x1"]["real_subject_overlap"]["mean"] == pytest.approx(0.2)
    assert s["s x4 sense"]["minus_s x1"]["subject_overlap"]["mean"] == pytest.approx(0.2)
    del rows[0]["settings"]["s x1"]["subject_overlap"]  # an older row: no overlap summary
    assert "subject_overlap" not in summary(rows)["s x1"]


def test_compare_pairs_perplexity_only_on_one_base(tmp_path, monkeypatch):
    """A base lever: two bases' perplexities count tokens of two tokenizers, so the paired
    differences leave perplexity out there (and keep it between runs on one base)."""
    import common
    import levers

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    cal = {"authorship_probability": {"ceiling": 0.5, "floor": 0.1},
           "fingerprint_distance": {"ceiling": 0.5, "floor": 1.5}}

    def doc(name, base, ap, ppl):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({
            "run_info": {"name": name, "git": "abc", "status": "ok",
                         "config": {"base": base}},
            "recipe": {"name": name},
            "rows": [{"user": u, "n": 30, "perplexity": ppl + i, "calibration": cal,
                      "real_subject_fit": {"score": 0.5},
                      "settings": {"s x1": {"authorship_probability": ap + 0.01 * i,
                                            "fingerprint_distance": 1.0,
                                            "subject_fit": {"score": 0.4},
                                            "novelty": {"verbatim": 0, "flagged": 0},
                                            "generate_cpu_s": 1.0}}}
                     for i, u in enumerate("abc")]}))
        return path

    first = doc("smol", "smollm2-135m", 0.3, 10.0)
    runs = [first, doc("smol2", "smollm2-135m", 0.4, 9.0), doc("gemma", "gemma3-270m", 0.5, 30.0)]
    out = json.loads(levers.compare(runs, "s x1", "cmp").read_text())
    same, other = (r["minus_first"] for r in out["recipes"][1:])
    assert same["perplexity"]["mean"] == pytest.approx(-1.0) and "perplexity" not in other
    assert other["authorship_probability"]["mean"] == pytest.approx(0.2)
    assert [r["base"] for r in out["recipes"]] == ["smollm2-135m"] * 2 + ["gemma3-270m"]
