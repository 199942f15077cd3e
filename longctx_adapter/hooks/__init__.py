"""The hook layer: what runs on a transformers model (the adapter handle, call path, rotary hook, chunked encoding,
question guidance, CLIP/SigLIP scorer). Importing it checks the transformers version (see compat.py)."""

from longctx_adapter.compat import check_transformers_version

check_transformers_version()
