"""A bad DEEPSERVE_* value stops `deepserve serve` with one line naming the setting, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.service.__main__ import main


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DEEPSERVE_DEVICES", "gpu7", "bad device 'gpu7'"),
        ("DEEPSERVE_MAX_RUNNING_SEQUENCES", "0", "greater than or equal to 1"),
        ("DEEPSERVE_PREFILL_CHUNK_TOKENS", "-4", "greater than or equal to 1"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    name: str,
    value: str,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main(["--store", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"deepserve: {name}: ") and says in err
    assert "Traceback" not in err
