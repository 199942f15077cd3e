"""`longctx-adapter demo`: stock vs adapted runs side by side, each in a fresh process."""
