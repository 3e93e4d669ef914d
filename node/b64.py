"""Strict base64 for the node (a tiny module: the command checks load it without the
config validator)."""

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64decode(text):
    """Strict base64 (padding required, no other characters) → bytes; ValueError otherwise."""
    import binascii
    if not isinstance(text, str) or len(text) % 4 or not text \
            or any(c not in B64 for c in text.rstrip("=")) or len(text) - len(text.rstrip("=")) > 2:
        raise ValueError("not base64")
    return binascii.a2b_base64(text)
