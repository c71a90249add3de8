"""The allowlist security review: what an agent can reach, with which credential, what a
change opens, and what observed traffic says (docs/review.md).

Pure logic over the parsed config and audit records; no mitmproxy import here.
"""
