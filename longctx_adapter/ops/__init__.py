"""Pure tensor math: pooling stages and their shape math, guided pooling, position maps, RoPE frequencies and
placeholder-run rewriting. Nothing here imports transformers, so it serves every model family (and serving
engines that pin other transformers releases) alike."""
