import json

import pytest

from ernie_m_jax import files


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "result.json"
    files.write_json_atomic(path, {"a": 1})
    files.write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    files.write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        files.write_json_atomic(path, {"not json": object()})

    write_text = type(path).write_text

    def full_disk(self, text, *args, **kwargs):  # half the file lands, then the disk is full
        write_text(self, text[:1], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(path), "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        files.write_text_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_marked_block_is_replaced_and_the_rest_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:cpu -->\nold table\n<!-- /results:cpu -->\nafter\n")
    files.replace_marked_block(readme, "cpu", "| new |")
    assert readme.read_text() == ("intro\n<!-- results:cpu -->\n| new |\n"
                                  "<!-- /results:cpu -->\nafter\n")
    assert files.read_marked_block(readme, "cpu") == "| new |"
    with pytest.raises(ValueError, match="needs exactly one <!-- results:gpu -->"):
        files.replace_marked_block(readme, "gpu", "x")
    readme.write_text("<!-- /results:cpu --> <!-- results:cpu -->")
    with pytest.raises(ValueError, match="exactly one"):
        files.replace_marked_block(readme, "cpu", "x")
