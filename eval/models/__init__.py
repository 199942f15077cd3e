"""lmms-eval plugin models of longctx-adapter.

lmms-eval 0.7 reads ``AVAILABLE_MODELS`` of ``<plugin>.models`` for every package named in the ``LMMS_EVAL_PLUGINS``
environment variable and imports ``<plugin>.models.<name>.<Class>``::

    LMMS_EVAL_PLUGINS=longctx_adapter.eval python -m lmms_eval --model longctx_adapter \
        --model_args pretrained=PATH,adapter=progressive:2/8/4+yarn-visual,max_frames_num=64 --tasks videomme

The same model is also offered through the ``lmms_eval.models`` entry-point group (``manifest`` below), which
lmms-eval 0.7 prefers; with the package installed it is found without the environment variable.
"""

AVAILABLE_MODELS = {"longctx_adapter": "LongctxAdapter"}


def manifest():
    """The entry point of group ``lmms_eval.models`` (see pyproject.toml)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="longctx_adapter",
        simple_class_path="longctx_adapter.eval.models.longctx_adapter.LongctxAdapter",
    )
