import pytest

from ernie_m_jax import cli, smoke


def test_smoke_sample_encodes_every_language():
    batches = smoke.build_batches()
    mono, pair = batches["mmlm"], batches["tlm"]
    assert mono["input_ids"].shape[0] == len(smoke.SAMPLE) * len(smoke.LANGUAGES)
    assert pair["input_ids"].shape[0] == len(smoke.SAMPLE) * (len(smoke.LANGUAGES) - 1)
    assert (mono["input_ids"][:, 0] == smoke.TOKENS.cls_id).all()
    assert set(pair["segment_ids"].ravel().tolist()) == {0, 1, 2}
    assert mono["input_ids"].max() < smoke.VOCAB_SIZE
    with pytest.raises(ValueError, match="empty sentence"):
        smoke.encode("   ", 10)


@pytest.mark.slow
def test_smoke_command_trains_every_objective(capsys):
    assert cli.main(["smoke", "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "OK: every objective's loss dropped" in out
    for name in ("mmlm", "tlm", "camlm", "btmlm"):
        assert f"  {name}" in out


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["smoke", "--steps", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
