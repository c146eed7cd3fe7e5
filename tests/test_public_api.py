"""The names DESIGN.md fixes, pinned; and the daemon's side importable without torch."""

from __future__ import annotations

import inspect
import subprocess
import sys

import edgewatch
import edgewatch.monitor
import edgewatch.schemas
import edgewatch.server


def isort_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return 0, name
    return (1 if name[:1].isupper() else 2), name


def test_exported_members_are_explicit_and_sorted() -> None:
    for module in (edgewatch, edgewatch.monitor, edgewatch.schemas, edgewatch.server):
        assert module.__all__ == sorted(module.__all__, key=isort_order), module.__name__
        assert len(set(module.__all__)) == len(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert edgewatch.__all__ == [
        "Monitor",
        "PreflightReport",
        "__version__",
        "attach",
        "find_lr",
        "preflight",
    ]


def test_attach_signature_is_the_documented_one() -> None:
    params = inspect.signature(edgewatch.attach).parameters
    assert list(params)[:2] == ["optimizer", "model"]
    for name, default in (
        ("endpoint", None),
        ("probe", None),
        ("scheduler", None),
        ("total_steps", None),
        ("budget", 0.02),
    ):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
    assert params["job"].kind is inspect.Parameter.KEYWORD_ONLY


def test_daemon_schemas_and_float_math_import_without_torch() -> None:
    # A finder that refuses torch, as on a machine without it. (Setting sys.modules['torch']
    # to None would also make 'import torch' fail, but it leaves a None entry that libraries
    # probing sys.modules for array types, like scipy, read as a module.)
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import edgewatch, edgewatch.server, edgewatch.schemas, edgewatch.monitor, edgewatch.cli\n"
        "from edgewatch.server.daemon import Daemon\n"
        "assert edgewatch.monitor.gd_threshold(0.1) == 20.0\n"
        "assert edgewatch.monitor.JobForecast({'kind': 'SGD'}).state == 'stable'\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_training_script_named_like_our_parts_does_not_shadow_them(tmp_path: object) -> None:
    import pathlib

    root = pathlib.Path(str(tmp_path))
    (root / "client.py").write_text("raise ImportError('user client.py was imported')\n")
    (root / "server").mkdir()
    (root / "server" / "__init__.py").write_text("raise ImportError('user server/ was imported')\n")
    code = "import edgewatch.client, edgewatch.server; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_monitor_exports_the_designed_torch_functions() -> None:
    import edgewatch.client.curvature  # imports every monitor submodule
    from edgewatch.monitor import sharpness, stability_threshold, top_eigenvalue

    assert callable(sharpness) and callable(top_eigenvalue) and callable(stability_threshold)
    assert edgewatch.monitor.sharpness is sharpness
    params = inspect.signature(sharpness).parameters
    assert list(params)[:4] == ["model", "probe", "optimizer", "v0"]
    params = inspect.signature(top_eigenvalue).parameters
    assert list(params)[:5] == ["matvec", "v0", "method", "tol", "max_iter"]
    assert params["method"].default == "lanczos"


def test_the_tracker_interface_is_the_one_the_client_codes_against() -> None:
    from edgewatch.monitor import SharpnessTracker, TrackedEstimate, critical_sharpness

    params = inspect.signature(SharpnessTracker).parameters
    assert list(params)[:3] == ["model", "probe", "optimizer"]
    for name, default in (("hvps_per_step", 2), ("max_hvps", 30), ("seed", None)):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
    fields = {f for f in TrackedEstimate.__dataclass_fields__}
    assert {"value", "vector", "matvecs", "residual", "error_bound", "converged", "gap"} <= fields
    assert {"slices", "restarted", "update_curvature", "eta_max", "loss"} <= fields
    params = inspect.signature(critical_sharpness).parameters
    assert list(params)[:4] == ["model", "probe", "direction", "lr"]
    assert params["max_forwards"].default == 10
    params = inspect.signature(edgewatch.monitor.top_eigenvalue).parameters
    assert params["gap"].kind is inspect.Parameter.KEYWORD_ONLY


def _helpers_of_the_module_itself(name: str, value: object) -> bool:
    """Names every module has that are no part of its API: ``from __future__ import
    annotations``, ``typing`` helpers, submodules."""
    import __future__

    import types

    return (
        name.startswith("_")
        or isinstance(value, types.ModuleType | __future__._Feature)
        or getattr(value, "__module__", None) == "typing"
        or name == "TYPE_CHECKING"
    )


def test_every_public_name_is_exported_and_every_export_exists() -> None:
    import edgewatch.client

    for module in (edgewatch, edgewatch.monitor, edgewatch.schemas, edgewatch.client):
        public = {
            name
            for name, value in vars(module).items()
            if not _helpers_of_the_module_itself(name, value)
        }
        assert public <= set(module.__all__), (module.__name__, public - set(module.__all__))
        assert module.__all__ == sorted(module.__all__, key=isort_order), module.__name__
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_classes_say_what_they_are() -> None:
    from edgewatch.client.curvature import CurvatureSchedule
    from edgewatch.client.sender import Sender
    from edgewatch.server.daemon import Daemon
    from edgewatch.server.metrics import EdgewatchCollector
    from edgewatch.server.state import JobState

    central = (edgewatch.Monitor, Sender, CurvatureSchedule, edgewatch.client.AttachOptions)
    for cls in (*central, Daemon, JobState, EdgewatchCollector):
        written = cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}(")  # a dataclass's
        assert written and len(cls.__doc__.split()) >= 8, cls.__name__
