"""Run a Triton kernel under each config a GPU's autotuner may pick, one at a time."""


def gpu_configs(module, make, monkeypatch, interpreting):
    """make()'s configs as a GPU sees them (module._INTERPRET off, autotuning on). Under the interpreter,
    which ignores num_warps and num_stages, one config per distinct set of constexprs."""
    with monkeypatch.context() as m:
        m.setattr(module, "_INTERPRET", False)
        m.setattr(module, "_AUTOTUNE", True)
        configs = make()
    if interpreting:
        configs = list({tuple(sorted(c.kwargs.items())): c for c in configs}.values())
    return configs


def for_each_config(kernel, configs, monkeypatch, check):
    """check() with the autotuned `kernel` pinned to each config in turn; a failure names the config."""
    for config in configs:
        monkeypatch.setattr(kernel, "configs", [config])
        monkeypatch.setattr(kernel, "cache", {})
        try:
            check()
        except AssertionError as e:
            raise AssertionError(f"{kernel.fn.__name__} with {config}: {e}") from e
