"""GPU placement on CPU: which model gets which device, and bad device settings fail at start."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from deepserve.handlers.base import ModelLoadError
from deepserve.service import devices
from deepserve.service.devices import DevicePlacer, parse_device, parse_devices, startup_problem, visible_gpus
from deepserve.service.settings import Settings


def test_indices_and_cuda_names_mean_the_same_gpu() -> None:
    assert parse_devices("0, cuda:1,2") == ["cuda:0", "cuda:1", "cuda:2"]
    assert parse_devices("") == [] and parse_device(" 3 ") == "cuda:3"


@pytest.mark.parametrize("bad", ["gpu0", "cuda:", "cuda:-1", "cpu", "0,,1"])
def test_a_bad_device_is_one_line_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="bad device") as err:
        parse_devices(bad)
    assert "\n" not in str(err.value)


def test_a_gpu_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="names a GPU twice"):
        parse_devices("0,cuda:0")


def test_unpinned_models_go_round_robin_and_pinned_ones_take_no_turn() -> None:
    placer = DevicePlacer(["cuda:0", "cuda:1"], fallback="cpu", visible=lambda: 2)
    placed = [placer.place("a"), placer.place("big", pinned="cuda:1"), placer.place("b"), placer.place("c")]
    assert placed == ["cuda:0", "cuda:1", "cuda:1", "cuda:0"]
    assert placer.place("a") == "cuda:0" and placer.place("b") == "cuda:1"  # a reload keeps its GPU


def test_without_a_list_every_model_runs_on_the_server_device() -> None:
    placer = DevicePlacer([], fallback="cuda", visible=lambda: 3)
    assert [placer.place("a"), placer.place("b")] == ["cuda", "cuda"]
    assert placer.place("c", pinned="cuda:2") == "cuda:2"


def test_settings_normalise_and_validate_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_DEVICES", "0,1")
    monkeypatch.setenv("DEEPSERVE_MODELS", '{"minilm": {"device": "1"}}')
    settings = Settings()
    assert settings.devices == "cuda:0,cuda:1" and settings.override("minilm").device == "cuda:1"
    monkeypatch.setenv("DEEPSERVE_DEVICES", "cuda:x")
    with pytest.raises(ValidationError, match="bad device 'cuda:x'"):
        Settings()


def test_registry_places_each_model_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from deepserve.service.metrics import Metrics
    from deepserve.service.registry import Registry

    monkeypatch.setenv("DEEPSERVE_DEVICES", "cuda:0,cuda:1")
    monkeypatch.setenv("DEEPSERVE_MODELS", '{"pinned": {"device": "cuda:1"}}')
    monkeypatch.setattr(devices, "visible_gpus", lambda: 2)
    registry = Registry(Settings(), Metrics(CollectorRegistry()))
    got = {n: registry._device_for(n, registry.settings.override(n).device) for n in ("a", "pinned", "b")}
    assert got == {"a": "cuda:0", "pinned": "cuda:1", "b": "cuda:1"}


def test_a_gpu_the_machine_lacks_fails_the_model_in_one_line() -> None:
    placer = DevicePlacer(["cuda:0", "cuda:1"], fallback="cpu", visible=lambda: 1)
    assert placer.place("a") == "cuda:0"
    with pytest.raises(ModelLoadError, match=r"^model b: device cuda:1 is not on this machine, which has "
                                             r"1 visible GPU\(s\), cuda:0..cuda:0$"):  # fmt: skip
        placer.place("b")
    none = DevicePlacer([], fallback="cpu", visible=lambda: 0)
    with pytest.raises(ModelLoadError, match="which has no visible GPU"):
        none.place("m", pinned="cuda:0")
    assert none.place("cpu-model") == "cpu"  # the CPU needs no GPU
    unknown = DevicePlacer([], fallback="cpu", visible=lambda: None)
    assert unknown.place("m", pinned="cuda:7") == "cuda:7"  # a machine that cannot tell is not second-guessed


@pytest.mark.parametrize(("listed", "count"), [("0,1", 2), ("", 0), ("1,-1,2", 1), ("GPU-5d1c,GPU-77ab", 2)])
def test_visible_gpus_follow_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, listed: str, count: int
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == count


def test_only_a_box_without_any_nvidia_driver_counts_as_no_gpu(tmp_path: Path) -> None:
    dev, proc = tmp_path / "dev", tmp_path / "proc-driver-nvidia"
    dev.mkdir()
    for name in ("null", "nvme0", "tty0"):
        (dev / name).touch()
    assert devices.driverless(dev, proc)
    (dev / "nvidiactl").touch()  # a driver, its per-GPU nodes not made yet: cannot tell
    assert not devices.driverless(dev, proc)
    (dev / "nvidiactl").unlink()
    proc.mkdir()
    assert not devices.driverless(dev, proc)
    assert not devices.driverless(tmp_path / "absent", proc)


def test_without_cuda_visible_devices_nvml_then_the_driver_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_nvml_count", lambda: None)
    monkeypatch.setattr(devices, "driverless", lambda: True)
    assert visible_gpus() == 0  # a Linux box without the NVIDIA driver: any cuda:N is refused
    monkeypatch.setattr(devices, "driverless", lambda: False)
    assert visible_gpus() is None  # a driver but no NVML: not checked
    monkeypatch.setattr(devices, "_nvml_count", lambda: 4)
    assert visible_gpus() == 4  # NVML first when it answers


def test_startup_names_the_gpu_the_node_lacks() -> None:
    assert startup_problem("", visible=lambda: pytest.fail("a CPU server must not count GPUs")) is None
    assert startup_problem("cuda:0,cuda:1", visible=lambda: 2) is None
    assert startup_problem("cuda:0,cuda:5", visible=lambda: None) is None  # cannot tell: not second-guessed
    assert startup_problem("0,2", visible=lambda: 2) == (
        "DEEPSERVE_DEVICES: device cuda:2 is not on this machine, which has 2 visible GPU(s), "
        "cuda:0..cuda:1 (got '0,2')"
    )


def test_a_devices_list_the_node_lacks_stops_serve_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepserve.service.__main__ import main

    monkeypatch.setenv("DEEPSERVE_DEVICES", "cuda:0,cuda:1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what a pod without a GPU limit is given
    with pytest.raises(SystemExit) as stopped:
        main(["--store", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("deepserve: DEEPSERVE_DEVICES: device cuda:0 is not on this machine, which has no "
                   "visible GPU (got 'cuda:0,cuda:1')")  # fmt: skip


def test_describe_names_the_gpu_each_model_was_placed_on() -> None:
    from deepserve.service.management_describe import _worker

    def worker(handler_device: str | None, server_device: str) -> tuple[bool, str]:
        entry = SimpleNamespace(
            name="m", version=1, state="ready", handler=SimpleNamespace(device=handler_device)
        )
        plane = SimpleNamespace(settings=SimpleNamespace(resolved_device=lambda: server_device))
        got = _worker(plane, entry, started=0.0)  # type: ignore[arg-type]
        return got["gpu"], got["gpuUsage"]

    assert worker("cuda:1", "cpu") == (True, "gpuId::1")  # the model's GPU, not the server's device
    assert worker("cuda", "cuda") == (True, "gpuId::0")
    assert worker("cpu", "cuda") == (False, "N/A")
    assert worker(None, "cuda") == (True, "gpuId::0")  # a handler that does not say: the server's
