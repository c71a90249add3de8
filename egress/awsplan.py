"""The checks on a request signed (AWS SigV4) with an aws_sigv4 secret's placeholder key id,
before egress signs it again (egress.sigv4 signs; docs/credentials.md lists the checks)."""

from __future__ import annotations

from egress import sigv4
from egress.config import SecretSpec
from egress.reasons import Reason
from egress.requestparts import Denial, Header, RequestParts, https_only, unavailable, utc_now
from egress.secretindex import SecretIndex
from egress.secrets import SecretValue


def credential_action_denial(
    spec: SecretSpec, signed: sigv4.Signed, path: str, headers: tuple[Header, ...] | list[Header],
    body: bytes | None,
) -> Denial | None:  # fmt: skip
    """A request for a credential of its own (sigv4.CREDENTIAL_ACTIONS), unless allowed."""
    assert spec.aws is not None
    if spec.aws.allow_credential_actions:
        return None
    action = sigv4.credential_action(signed, path, headers, body)
    if action is None:
        return None
    return Denial(
        Reason.AWS_CREDENTIAL_ACTION,
        f"the request asks {signed.service} for {action}, whose answer is a credential of its "
        f"own: signed with the real key of {spec.name!r} it would give the agent a working "
        f"credential past egress. To allow it, set secrets[{spec.index}].aws."
        "allow_credential_actions: true",
        spec.name,
    )


def foreign_aws_key(req: RequestParts, index: SecretIndex, bound: tuple[int, ...]) -> Denial | None:
    """A presigned URL on a host with a bound AWS secret must be signed with its placeholder
    key id (the Authorization header form is checked with the other auth headers)."""
    aws = [index.specs[k] for k in bound if index.specs[k].scheme == "aws_sigv4"]
    if not aws or "?" not in req.path:
        return None
    signed = sigv4.parse(req.headers, req.path)
    if not isinstance(signed, sigv4.Signed) or signed.form != "query":
        return None
    if any(s.placeholder == signed.access_key_id for s in aws) or not all(
        s.require_placeholder for s in aws
    ):
        return None
    names = ", ".join(s.name for s in aws)
    return Denial(
        Reason.FOREIGN_CREDENTIAL,
        f"the presigned URL of a request to {req.host!r} is signed with an access key id that is "
        f"not the placeholder of {names}: sign with the placeholder (egress signs again with "
        "the real key)",
        aws[0].name,
    )


def resign_check(
    req: RequestParts, spec: SecretSpec, where: list[str], value: SecretValue | None
) -> Denial | sigv4.Signed:
    """Whether a request carrying the placeholder key id of an AWS secret can be re-signed."""
    assert spec.aws is not None
    signed = sigv4.parse(req.headers, req.path)
    if isinstance(signed, sigv4.Refusal):
        reason = (Reason.SIGNATURE_SCHEME_UNSUPPORTED if signed.code == "unsupported"
                  else Reason.MALFORMED_REQUEST)  # fmt: skip
        return Denial(reason, f"{signed.detail} (secret {spec.name!r})", spec.name)
    if signed is None or signed.access_key_id != spec.placeholder:
        return Denial(
            Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED,
            f"the placeholder of secret {spec.name!r} is in the {where[0]} of the request, but "
            f"the request is not signed (AWS SigV4) with it: {spec.name!r} is an AWS access key "
            "id, used only to sign requests that egress signs again",
            spec.name,
        )
    home = "headers" if signed.form == "header" else "query"
    outside = [w for w in where if w != home]
    if outside:
        return Denial(
            Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED,
            f"the placeholder key id of secret {spec.name!r} is in the {outside[0]} of the "
            f"request as well as in its signature; egress substitutes it nowhere",
            spec.name,
        )
    if signed.form == "query" and not spec.aws.presigned:
        return Denial(
            Reason.SIGNATURE_SCHEME_UNSUPPORTED,
            f"a presigned URL signed with the placeholder of {spec.name!r}, and "
            f"secrets[{spec.index}].aws.presigned is false",
            spec.name,
        )
    problem = sigv4.scope_problem(signed, req.host, spec.aws)
    if problem:
        return Denial(
            Reason.AWS_SCOPE_MISMATCH,
            f"{problem}; secret {spec.name!r} signs only where its aws: block and its hosts "
            f"allow (add the region or service to secrets[{spec.index}].aws, or name the "
            "endpoint in aws.endpoints)",
            spec.name,
        )
    refused = credential_action_denial(spec, signed, req.path, req.headers, None)
    if refused is not None:
        return refused
    if signed.form == "query":
        problem = sigv4.presign_problem(signed, utc_now(), spec.aws)
        if problem:
            return Denial(
                Reason.PRESIGN_EXPIRED,
                f"the presigned URL signed with the placeholder of {spec.name!r} is not valid now: "
                f"{problem}",
                spec.name,
            )
    return https_only(req, spec) or unavailable(spec, value is not None) or signed
