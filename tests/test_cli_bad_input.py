"""Bad input through the CLI: one exact line on stderr, exit code 2, no traceback (16 kinds)."""

import subprocess
import sys

import pytest

from posttrain.cli import main

PREF = '{"prompt":"a","chosen":"b","rejected":"c"}\n'
CASES = [
    ("empty.jsonl", "", "empty.jsonl: file is empty"),
    ("notjson.jsonl", PREF + "{oops\n",
     "notjson.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at col 2)"),
    ("missing.jsonl", PREF + '{"prompt":"a","chosen":"b"}\n', "missing.jsonl:2: column 'rejected' is missing"),
    ("wrongtype.jsonl", '{"prompt":5,"chosen":"b","rejected":"c"}\n',
     "wrongtype.jsonl:1: column 'prompt' must be text or a list of messages, got int"),
    ("emptychosen.jsonl", '{"prompt":"a","chosen":"","rejected":"c"}\n',
     "emptychosen.jsonl:1: column 'chosen' is empty"),
    ("same.jsonl", '{"prompt":"a","chosen":"b","rejected":"b"}\n', "same.jsonl:1: 'chosen' and 'rejected' are identical"),
    ("role.jsonl", '{"messages":[{"role":"user","content":"a"},{"role":"robot","content":"b"}]}\n',
     "role.jsonl:1: column 'messages' item 1: unknown role 'robot' (expected system, user, assistant, tool)"),
    ("perm.jsonl", '{"prompt":"a","completions":["x","y","z"],"ranking":[0,0,1]}\n',
     "perm.jsonl:1: column 'ranking' is not a permutation of 0..2"),
    ("label.jsonl", '{"prompt":"a","completion":"b","label":"yes"}\n', "label.jsonl:1: column 'label' must be true or false"),
    ("nan.jsonl", '{"prompt":"a","chosen":"b","rejected":"c","margin":NaN}\n', "nan.jsonl:1: column 'margin' is NaN"),
    ("noassistant.jsonl", '{"messages":[{"role":"user","content":"a"}]}\n',
     "noassistant.jsonl:1: column 'messages' has no assistant turn"),
    ("lens.jsonl", '{"prompt":"a","completions":["x","y"],"ranking":[0,1,2]}\n',
     "lens.jsonl:1: columns 'completions' (2) and 'ranking' (3) have different lengths"),
    ("data.txt", "hello",
     "data.txt: unknown file type '.txt' (expected .jsonl, .json, .parquet, .csv, a datasets folder or a hub id)"),
    ("obj.json", '{"a": 1}', "obj.json: expected a list of objects or {\"data\": [...]}, got an object without a 'data' list"),
    ("nofile.jsonl", None, "nofile.jsonl: no such file"),
]


@pytest.mark.parametrize("name,content,message", CASES, ids=[c[0] for c in CASES])
def test_bad_dataset_one_line_exit_2(tmp_path, monkeypatch, capsys, name, content, message):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / name).write_text(content)
    assert main(["check-data", name]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


def test_unreadable_parquet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.parquet").write_text("not a parquet file")
    assert main(["check-data", "bad.parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad.parquet: cannot read parquet file (") and err.endswith(")")
    assert "\n" not in err


def test_bad_data_through_a_stage_writes_nothing(tmp_path):
    """A real stage, as a subprocess: exit 2, the one line, no traceback, output_dir never created."""
    (tmp_path / "prefs.jsonl").write_text(PREF + '{"prompt":"a","chosen":"b"}\n')
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "dpo", "model=preset:tiny",
                        f"data.train={tmp_path / 'prefs.jsonl'}", f"output_dir={out}"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("prefs.jsonl:2: column 'rejected' is missing")
    assert "Traceback" not in r.stderr and not out.exists()
