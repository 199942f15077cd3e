"""lmms-eval task folder of the ``longctx_adapter.eval`` plugin.

lmms-eval adds ``<plugin>.tasks`` to its task search path for every package named in ``LMMS_EVAL_PLUGINS``, so the
package must exist; it ships no tasks (use lmms-eval's own, or ``--include_path`` for local ones).
"""
