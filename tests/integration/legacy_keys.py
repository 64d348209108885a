"""Keys as xbgw made them before generation was locked (issue 13), for tests.

Such keys are modifiable (SoftHSM's default), EC private keys carry SIGN_RECOVER, and every
purpose's version has the bare 4-byte version as ``CKA_ID``. Tokens in service hold them: the
tests show they are still found and used, and that the start check and ``keys list`` report
them. Run as a module to make one in another process (a daemon's or the CLI's token):

    python -m tests.integration.legacy_keys MODULE TOKEN PIN_FILE PURPOSE VERSION [--add CAP]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11.util.ec import encode_named_curve_parameters

from gateway.keys import Purpose, version_id

#: The private/secret template of the code before issue 13 (no MODIFIABLE, no COPYABLE).
OLD_SECRET = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}
OLD_CAPABILITY = {
    Purpose.TRANSPORT: {Attribute.DERIVE: True},
    Purpose.SIGNING: {Attribute.SIGN: True},
    Purpose.STORAGE: {Attribute.WRAP: True, Attribute.UNWRAP: True},
}
OLD_PRIVATE_OFF = {
    a: False for a in (Attribute.SIGN, Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE)
}
OLD_SECRET_OFF = {
    a: False
    for a in (Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE, Attribute.ENCRYPT,
              Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP)
}  # fmt: skip
CAPABILITY_ATTRS = {
    "sign": Attribute.SIGN,
    "derive": Attribute.DERIVE,
    "encrypt": Attribute.ENCRYPT,
    "decrypt": Attribute.DECRYPT,
}


def make_legacy_key(session: Any, purpose: Purpose, version: int) -> Any:
    """Generate ``purpose`` ``version`` with the old template; return the private/secret key."""
    if purpose is Purpose.STORAGE:
        return session.generate_key(
            KeyType.AES,
            256,
            id=version_id(version),
            label=purpose.label,
            store=True,
            capabilities=MechanismFlag(0),
            template={**OLD_SECRET, **OLD_SECRET_OFF, **OLD_CAPABILITY[purpose]},
        )
    params = session.create_domain_parameters(
        KeyType.EC,
        {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
        local=True,
    )
    _, private = params.generate_keypair(
        id=version_id(version),
        label=purpose.label,
        store=True,
        capabilities=MechanismFlag(0),
        public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False},
        private_template={**OLD_SECRET, **OLD_PRIVATE_OFF, **OLD_CAPABILITY[purpose]},
    )
    return private


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("token")
    parser.add_argument("pin_file")
    parser.add_argument("purpose", choices=[p.value for p in Purpose])
    parser.add_argument("version", type=int)
    parser.add_argument("--add", choices=sorted(CAPABILITY_ATTRS), help="then widen it")
    args = parser.parse_args()
    pin = Path(args.pin_file).read_text(encoding="utf-8").strip()
    token = pkcs11.lib(args.module).get_token(token_label=args.token)
    with token.open(rw=True, user_pin=pin) as session:
        key = make_legacy_key(session, Purpose(args.purpose), args.version)
        if args.add:
            key[CAPABILITY_ATTRS[args.add]] = True


if __name__ == "__main__":
    main()
