import pytest

from pipeline_src.io import InputError, atomic_path, read_json, write_json


def test_atomic_file_only_appears_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_atomic_directory_replaces_old(tmp_path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


def test_json_roundtrip_and_errors(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert read_json(tmp_path / "a.json") == {"b": [1, 2]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
