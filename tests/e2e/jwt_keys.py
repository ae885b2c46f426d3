"""An RSA signing key made by the test, its JWKS for Envoy's jwt_authn, and signed JWTs."""

from __future__ import annotations

import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "promql-tenant-filter-e2e"
AUDIENCE = "promql-tenant-filter"  # as in envoy/envoy.jwt.yaml


class SigningKey:
    def __init__(self, kid: str):
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        public = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        public.update(kid=self.kid, alg="RS256", use="sig")
        return json.dumps({"keys": [public]})

    def token(self, claims: dict, lifetime_s: int = 600, **overrides) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime_s,
                   **claims, **overrides}
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})
