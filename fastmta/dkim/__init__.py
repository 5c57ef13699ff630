"""DKIM signing of outgoing mail: the signature (sign), key files (keys), which key signs what (signer)."""
