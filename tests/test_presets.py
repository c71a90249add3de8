"""The presets egress ships (egress/presets/, linked as config/presets/): each loads alone
and with all the others, allows the requests its clients really send, refuses what it
deliberately leaves out with the right reason, declares well-formed secrets, and works
through the real proxy."""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from egress import config
from egress.config import Config
from egress.config.includes import preset_dir, preset_names
from egress.config.model import _ENV_NAME, _PLACEHOLDER
from egress.decide import decide_url
from egress.policy import Allowlist
from tests.canary import CANARIES
from tests.conftest import RunningProxy, proxy_env, start_proxy, write_config
from tests.upstream import Upstream

PRESETS = [
    "anthropic", "azure-openai", "crates", "docker-hub", "github", "go", "huggingface", "npm",
    "openai", "pypi",
]  # fmt: skip

SHA = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
SIGNED = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=300&X-Amz-Signature=ab12"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "egress.yaml"
    path.write_text(text)
    return config.load(path)


def preset_config(tmp_path: Path, *names: str) -> Config:
    return load(tmp_path, f"include: [{', '.join(names)}]\n")


def test_the_shipped_presets_are_the_documented_ones() -> None:
    assert preset_names() == PRESETS
    documented = (Path(__file__).parent.parent / "docs" / "presets.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in documented, name
    assert (Path(__file__).parent.parent / "config" / "presets").resolve() == preset_dir()


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_loads_alone_with_every_rule_from_it(tmp_path: Path, name: str) -> None:
    cfg = preset_config(tmp_path, name)
    assert cfg.rules
    for i in range(len(cfg.rules)):
        assert cfg.origins[f"allow[{i}]"].file == f"preset:{name}"
    for i in range(len(cfg.secrets)):
        assert cfg.origins[f"secrets[{i}]"].file == f"preset:{name}"


def test_all_presets_load_together(tmp_path: Path) -> None:
    cfg = preset_config(tmp_path, *PRESETS)
    alone = sum(len(preset_config(tmp_path, n).rules) for n in PRESETS)
    assert len(cfg.rules) == alone
    assert len({s.name for s in cfg.secrets}) == len(cfg.secrets) == 7


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_file_has_its_header(name: str) -> None:
    """What it is for, which clients, what it leaves out and how to add it."""
    text = (preset_dir() / f"{name}.yaml").read_text()
    assert text.startswith(f"# preset:{name}: ")
    header = text.split("\ndescription:", 1)[0]
    assert "# For: " in header and "NOT allowed" in header, name
    assert "description:" in text


@pytest.mark.parametrize("name", PRESETS)
def test_rules_are_narrow(tmp_path: Path, name: str) -> None:
    """No wildcard, HTTPS on 443 only, no WebSocket, and every rule names its methods."""
    for rule in preset_config(tmp_path, name).rules:
        assert rule.host.kind == "name", rule.host.text
        assert rule.schemes == ("https",) and rule.ports == (443,), rule.host.text
        assert rule.methods, rule.host.text
        assert not rule.websocket


# What the clients really send: (preset, method, URL).
ALLOWED = [
    # pip, uv, poetry
    ("pypi", "GET", "https://pypi.org/simple/requests/"),
    ("pypi", "GET", "https://pypi.org/simple/typing-extensions/"),
    ("pypi", "GET", "https://pypi.org/pypi/requests/json"),
    ("pypi", "GET", "https://pypi.org/pypi/pip/json"),
    ("pypi", "GET", "https://pypi.org/pypi/requests/2.32.3/json"),
    ("pypi", "GET", "https://files.pythonhosted.org/packages/f9/9b/335f9764261e915ed497fcdeb11df5dfd6f7bf257d4a6a2a686d80da4d54/requests-2.32.3-py3-none-any.whl"),
    ("pypi", "GET", "https://files.pythonhosted.org/packages/f9/9b/335f9764261e915ed497fcdeb11df5dfd6f7bf257d4a6a2a686d80da4d54/requests-2.32.3-py3-none-any.whl.metadata"),
    ("pypi", "HEAD", "https://files.pythonhosted.org/packages/63/70/2bf7780ad2d390a8d301ad0b550f1581eadbd9a20f896afe06353c2a2913/requests-2.32.3.tar.gz"),
    # npm, pnpm, yarn
    ("npm", "GET", "https://registry.npmjs.org/lodash"),
    ("npm", "GET", "https://registry.npmjs.org/@types%2fnode"),
    ("npm", "GET", "https://registry.npmjs.org/@types/node"),
    ("npm", "GET", "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz"),
    ("npm", "GET", "https://registry.npmjs.org/@types/node/-/node-20.11.0.tgz"),
    ("npm", "POST", "https://registry.npmjs.org/-/npm/v1/security/advisories/bulk"),
    ("npm", "POST", "https://registry.npmjs.org/-/npm/v1/security/audits/quick"),
    ("npm", "GET", "https://registry.npmjs.org/-/v1/search?text=react&size=20"),
    ("npm", "GET", "https://registry.yarnpkg.com/react"),
    ("npm", "GET", "https://registry.yarnpkg.com/react/-/react-18.3.1.tgz"),
    # cargo (sparse index)
    ("crates", "GET", "https://index.crates.io/config.json"),
    ("crates", "GET", "https://index.crates.io/se/rd/serde"),
    ("crates", "GET", "https://index.crates.io/3/s/syn"),
    ("crates", "GET", "https://index.crates.io/1/a"),
    ("crates", "GET", "https://static.crates.io/crates/serde/1.0.203/download"),
    ("crates", "GET", "https://static.crates.io/crates/serde/serde-1.0.203.crate"),
    ("crates", "GET", "https://crates.io/api/v1/crates?q=serde&per_page=10"),
    ("crates", "GET", "https://crates.io/api/v1/crates/serde/1.0.203/download"),
    # go
    ("go", "GET", "https://proxy.golang.org/github.com/pkg/errors/@v/list"),
    ("go", "GET", "https://proxy.golang.org/github.com/pkg/errors/@v/v0.9.1.info"),
    ("go", "GET", "https://proxy.golang.org/github.com/pkg/errors/@v/v0.9.1.mod"),
    ("go", "GET", "https://proxy.golang.org/github.com/pkg/errors/@v/v0.9.1.zip"),
    ("go", "GET", "https://proxy.golang.org/github.com/!burnt!sushi/toml/@latest"),
    ("go", "GET", "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go1.22.0.linux-amd64.zip"),
    ("go", "GET", "https://proxy.golang.org/sumdb/sum.golang.org/supported"),
    ("go", "GET", "https://proxy.golang.org/sumdb/sum.golang.org/lookup/github.com/pkg/errors@v0.9.1"),
    ("go", "GET", "https://sum.golang.org/lookup/github.com/pkg/errors@v0.9.1"),
    ("go", "GET", "https://sum.golang.org/tile/8/0/x114/431"),
    ("go", "GET", "https://sum.golang.org/tile/8/1/000.p/42"),
    ("go", "GET", "https://sum.golang.org/latest"),
    # gh, octokit, git
    ("github", "GET", "https://api.github.com/repos/o/r"),
    ("github", "GET", "https://api.github.com/repos/o/r/pulls?state=open&per_page=100"),
    ("github", "POST", "https://api.github.com/repos/o/r/issues"),
    ("github", "POST", "https://api.github.com/repos/o/r/pulls"),
    ("github", "PATCH", "https://api.github.com/repos/o/r/pulls/1"),
    ("github", "PUT", "https://api.github.com/repos/o/r/pulls/1/merge"),
    ("github", "DELETE", "https://api.github.com/repos/o/r/git/refs/heads/feature"),
    ("github", "GET", "https://api.github.com/repos/o/r/releases/assets/42"),
    ("github", "GET", "https://api.github.com/repos/o/r/tarball/main"),
    ("github", "GET", "https://api.github.com/repositories/123456/issues?page=2"),
    ("github", "GET", "https://api.github.com/user"),
    ("github", "GET", "https://api.github.com/user/repos"),
    ("github", "GET", "https://api.github.com/users/octocat"),
    ("github", "GET", "https://api.github.com/orgs/o/repos"),
    ("github", "GET", "https://api.github.com/search/issues?q=is%3Aopen"),
    ("github", "GET", "https://api.github.com/rate_limit"),
    ("github", "GET", "https://api.github.com/installation/repositories"),
    ("github", "GET", "https://api.github.com/meta"),
    ("github", "POST", "https://api.github.com/graphql"),
    ("github", "GET", "https://github.com/o/r.git/info/refs?service=git-upload-pack"),
    ("github", "GET", "https://github.com/o/r/info/refs?service=git-upload-pack"),
    ("github", "POST", "https://github.com/o/r.git/git-upload-pack"),
    ("github", "GET", "https://github.com/o/r.git/info/refs?service=git-receive-pack"),
    ("github", "POST", "https://github.com/o/r.git/git-receive-pack"),
    ("github", "POST", "https://github.com/o/r.git/info/lfs/objects/batch"),
    ("github", "GET", "https://github.com/o/r/releases/download/v1.0/tool-linux-amd64.tar.gz"),
    ("github", "GET", "https://codeload.github.com/o/r/tar.gz/refs/heads/main"),
    ("github", "GET", "https://codeload.github.com/o/r/legacy.zip/refs/heads/main"),
    ("github", "GET", "https://release-assets.githubusercontent.com/github-production-release-asset/123/abc?sp=r&sig=x"),
    ("github", "GET", f"https://objects.githubusercontent.com/github-production-release-asset-2e65be/123/abc?{SIGNED}"),
    # Anthropic SDKs, Claude Code
    ("anthropic", "POST", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/messages?beta=true"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/messages/count_tokens"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/messages/batches"),
    ("anthropic", "GET", "https://api.anthropic.com/v1/messages/batches?limit=20"),
    ("anthropic", "GET", "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/messages/batches/msgbatch_01/cancel"),
    ("anthropic", "DELETE", "https://api.anthropic.com/v1/messages/batches/msgbatch_01"),
    ("anthropic", "GET", "https://api.anthropic.com/v1/models"),
    ("anthropic", "GET", "https://api.anthropic.com/v1/models/claude-sonnet-4-5"),
    # OpenAI SDKs, Codex
    ("openai", "POST", "https://api.openai.com/v1/chat/completions"),
    ("openai", "GET", "https://api.openai.com/v1/chat/completions?limit=10"),
    ("openai", "POST", "https://api.openai.com/v1/responses"),
    ("openai", "GET", "https://api.openai.com/v1/responses/resp_123"),
    ("openai", "GET", "https://api.openai.com/v1/responses/resp_123/input_items"),
    ("openai", "POST", "https://api.openai.com/v1/responses/resp_123/cancel"),
    ("openai", "DELETE", "https://api.openai.com/v1/responses/resp_123"),
    ("openai", "POST", "https://api.openai.com/v1/embeddings"),
    ("openai", "POST", "https://api.openai.com/v1/completions"),
    ("openai", "POST", "https://api.openai.com/v1/moderations"),
    ("openai", "POST", "https://api.openai.com/v1/audio/transcriptions"),
    ("openai", "POST", "https://api.openai.com/v1/images/generations"),
    ("openai", "GET", "https://api.openai.com/v1/models"),
    ("openai", "GET", "https://api.openai.com/v1/models/gpt-4o"),
    # Azure OpenAI: the paths, on the preset's reserved name (see test_azure_openai_*)
    ("azure-openai", "POST", "https://your-resource.openai.azure.com.invalid/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
    ("azure-openai", "POST", "https://your-resource.openai.azure.com.invalid/openai/v1/responses"),
    ("azure-openai", "GET", "https://your-resource.openai.azure.com.invalid/openai/v1/models"),
    # huggingface_hub, transformers, datasets, hf_xet
    ("huggingface", "HEAD", "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/config.json"),
    ("huggingface", "GET", "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/model.safetensors"),
    ("huggingface", "GET", "https://huggingface.co/datasets/rajpurkar/squad/resolve/main/README.md"),
    ("huggingface", "GET", "https://huggingface.co/api/models/google-bert/bert-base-uncased/revision/main"),
    ("huggingface", "GET", "https://huggingface.co/api/models/Qwen/Qwen3-0.6B/xet-read-token/main"),
    ("huggingface", "GET", "https://huggingface.co/api/datasets/rajpurkar/squad/tree/main/plain_text?recursive=false"),
    ("huggingface", "GET", "https://huggingface.co/api/whoami-v2"),
    ("huggingface", "GET", f"https://cas-server.xethub.hf.co/v1/reconstructions/{SHA}"),
    ("huggingface", "GET", f"https://cas-server.xethub-eu.hf.co/v2/reconstructions/{SHA}"),
    ("huggingface", "GET", f"https://transfer.xethub.hf.co/xorbs/default/{SHA}?X-Xet-Signed-Range=bytes%3D0-1023&Expires=1&Signature=x"),
    ("huggingface", "GET", f"https://cdn-lfs-us-1.hf.co/repos/ab/cd/{SHA}?{SIGNED}"),
    ("huggingface", "GET", f"https://us.gcp.cdn.hf.co/xet-bridge-us/{SHA}?{SIGNED}"),
    # docker pull, containerd, skopeo, crane
    ("docker-hub", "GET", "https://registry-1.docker.io/v2/"),
    ("docker-hub", "GET", "https://auth.docker.io/token?scope=repository%3Alibrary%2Falpine%3Apull&service=registry.docker.io"),
    ("docker-hub", "HEAD", "https://registry-1.docker.io/v2/library/alpine/manifests/latest"),
    ("docker-hub", "GET", "https://registry-1.docker.io/v2/library/alpine/manifests/latest"),
    ("docker-hub", "GET", f"https://registry-1.docker.io/v2/library/alpine/manifests/sha256:{SHA}"),
    ("docker-hub", "GET", f"https://registry-1.docker.io/v2/library/alpine/blobs/sha256:{SHA}"),
    ("docker-hub", "GET", f"https://production.cloudflare.docker.com/registry-v2/docker/registry/v2/blobs/sha256/5f/{SHA}/data?verify=1-abc"),
    ("docker-hub", "GET", f"https://docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com/registry-v2/docker/registry/v2/blobs/sha256/5f/{SHA}/data?{SIGNED}"),
]  # fmt: skip

# What each preset leaves out on purpose: (preset, method, URL, reason code).
DENIED = [
    ("pypi", "POST", "https://upload.pypi.org/legacy/", "host_not_allowed"),
    ("pypi", "GET", "https://test.pypi.org/simple/requests/", "host_not_allowed"),
    ("pypi", "GET", "https://pypi.org/project/requests/", "path_not_allowed"),
    ("pypi", "POST", "https://pypi.org/simple/requests/", "method_not_allowed"),
    ("pypi", "GET", "http://pypi.org/simple/requests/", "port_not_allowed"),
    ("pypi", "GET", "https://files.pythonhosted.org/other/x", "path_not_allowed"),
    ("npm", "PUT", "https://registry.npmjs.org/left-pad", "method_not_allowed"),  # npm publish
    ("npm", "PUT", "https://registry.npmjs.org/-/package/left-pad/dist-tags/latest", "method_not_allowed"),
    ("npm", "DELETE", "https://registry.npmjs.org/left-pad/-rev/3-abc", "method_not_allowed"),
    ("npm", "PUT", "https://registry.npmjs.org/-/user/org.couchdb.user:agent", "method_not_allowed"),
    ("npm", "POST", "https://registry.npmjs.org/-/v1/login", "path_not_allowed"),
    ("npm", "POST", "https://registry.npmjs.org/-/npm/v1/tokens", "path_not_allowed"),
    ("npm", "PUT", "https://registry.yarnpkg.com/left-pad", "method_not_allowed"),
    ("npm", "GET", "https://npm.pkg.github.com/@o%2fpkg", "host_not_allowed"),
    ("crates", "PUT", "https://crates.io/api/v1/crates/new", "method_not_allowed"),  # cargo publish
    ("crates", "DELETE", "https://crates.io/api/v1/crates/serde/1.0.203/yank", "method_not_allowed"),
    ("crates", "PUT", "https://crates.io/api/v1/crates/serde/owners", "method_not_allowed"),
    ("crates", "GET", "https://crates.io/crates/serde", "path_not_allowed"),
    ("crates", "GET", "https://github.com/rust-lang/crates.io-index/info/refs?service=git-upload-pack", "host_not_allowed"),
    ("crates", "GET", "https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init", "host_not_allowed"),
    ("go", "GET", "https://github.com/pkg/errors?go-get=1", "host_not_allowed"),  # GOPROXY=direct
    ("go", "GET", "https://go.googlesource.com/tools/info/refs?service=git-upload-pack", "host_not_allowed"),
    ("go", "POST", "https://proxy.golang.org/github.com/pkg/errors/@v/list", "method_not_allowed"),
    ("go", "GET", "https://sum.golang.org/other", "path_not_allowed"),
    ("go", "GET", "https://vuln.go.dev/index/db.json", "host_not_allowed"),
    ("github", "GET", "https://api.github.com/gists", "path_not_allowed"),
    ("github", "POST", "https://api.github.com/gists", "path_not_allowed"),
    ("github", "PATCH", "https://api.github.com/gists/aa5a315d61ae9438b18d", "path_not_allowed"),
    ("github", "GET", "https://gist.github.com/o/aa5a315d61ae9438b18d", "host_not_allowed"),
    ("github", "POST", "https://gist.github.com/aa5a315d61ae9438b18d.git/git-receive-pack", "host_not_allowed"),
    ("github", "GET", "https://gist.githubusercontent.com/o/aa5a315d61ae9438b18d/raw/x.sh", "host_not_allowed"),
    ("github", "GET", "https://raw.githubusercontent.com/o/r/main/install.sh", "host_not_allowed"),
    ("github", "POST", "https://uploads.github.com/repos/o/r/releases/1/assets?name=x.zip", "host_not_allowed"),
    ("github", "POST", "https://api.github.com/user/repos", "path_not_allowed"),
    ("github", "POST", "https://api.github.com/user/keys", "path_not_allowed"),
    ("github", "PATCH", "https://api.github.com/user", "path_not_allowed"),
    ("github", "POST", "https://api.github.com/orgs/o/repos", "path_not_allowed"),
    ("github", "POST", "https://api.github.com/app/installations/1/access_tokens", "path_not_allowed"),
    ("github", "GET", "https://api.github.com/repos/%2e%2e/gists", "path_not_allowed"),
    ("github", "GET", "https://api.github.com/repos/o/r/../../../gists", "path_not_allowed"),
    ("github", "GET", "http://api.github.com/repos/o/r", "port_not_allowed"),
    ("github", "PUT", "https://github.com/o/r", "method_not_allowed"),
    ("github", "DELETE", "https://github.com/o/r.git/info/lfs/locks/1", "method_not_allowed"),
    ("github", "POST", "https://codeload.github.com/o/r/tar.gz/main", "method_not_allowed"),
    ("github", "PUT", "https://objects.githubusercontent.com/x", "method_not_allowed"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/files", "path_not_allowed"),
    ("anthropic", "GET", "https://api.anthropic.com/v1/files/file_011/content", "path_not_allowed"),
    ("anthropic", "DELETE", "https://api.anthropic.com/v1/files/file_011", "path_not_allowed"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/skills", "path_not_allowed"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/complete", "path_not_allowed"),
    ("anthropic", "GET", "https://api.anthropic.com/v1/organizations/users", "path_not_allowed"),
    ("anthropic", "POST", "https://api.anthropic.com/v1/messagesx", "path_not_allowed"),
    ("anthropic", "PUT", "https://api.anthropic.com/v1/messages", "method_not_allowed"),
    ("anthropic", "GET", "https://claude.ai/api/organizations", "host_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/files", "path_not_allowed"),
    ("openai", "GET", "https://api.openai.com/v1/files/file-abc/content", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/uploads", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/uploads/upload_abc/parts", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/vector_stores", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/batches", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/fine_tuning/jobs", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/assistants", "path_not_allowed"),
    ("openai", "POST", "https://api.openai.com/v1/containers", "path_not_allowed"),
    ("openai", "GET", "https://api.openai.com/v1/realtime?model=gpt-realtime", "path_not_allowed"),
    ("openai", "GET", "https://api.openai.com/v1/organization/usage/completions", "path_not_allowed"),
    ("openai", "PUT", "https://api.openai.com/v1/chat/completions", "method_not_allowed"),
    ("openai", "GET", "https://oaidalleapiprodscus.blob.core.windows.net/private/x.png", "host_not_allowed"),
    # Azure: no real resource is reachable through the preset alone.
    ("azure-openai", "POST", "https://myco-eastus.openai.azure.com/openai/deployments/gpt-4o/chat/completions", "host_not_allowed"),
    ("azure-openai", "POST", "https://your-resource.openai.azure.com/openai/deployments/gpt-4o/chat/completions", "host_not_allowed"),
    ("azure-openai", "POST", "https://your-resource.openai.azure.com.invalid/openai/files", "path_not_allowed"),
    ("azure-openai", "POST", "https://your-resource.openai.azure.com.invalid/openai/v1/files", "path_not_allowed"),
    ("huggingface", "POST", "https://huggingface.co/api/repos/create", "method_not_allowed"),
    ("huggingface", "POST", "https://huggingface.co/api/models/o/r/commit/main", "method_not_allowed"),
    ("huggingface", "POST", "https://huggingface.co/api/models/o/r/preupload/main", "method_not_allowed"),
    ("huggingface", "DELETE", "https://huggingface.co/api/repos/delete", "method_not_allowed"),
    ("huggingface", "POST", "https://huggingface.co/o/r.git/git-receive-pack", "method_not_allowed"),
    ("huggingface", "POST", f"https://cas-server.xethub.hf.co/v1/xorbs/default/{SHA}", "method_not_allowed"),
    ("huggingface", "POST", "https://cas-server.xethub.hf.co/v1/shards", "method_not_allowed"),
    ("huggingface", "POST", "https://router.huggingface.co/v1/chat/completions", "host_not_allowed"),
    ("huggingface", "GET", "https://someone-app.hf.space/", "host_not_allowed"),
    ("docker-hub", "POST", "https://registry-1.docker.io/v2/o/app/blobs/uploads/", "method_not_allowed"),
    ("docker-hub", "PATCH", "https://registry-1.docker.io/v2/o/app/blobs/uploads/6d3c5b0e", "method_not_allowed"),
    ("docker-hub", "PUT", "https://registry-1.docker.io/v2/o/app/manifests/latest", "method_not_allowed"),
    ("docker-hub", "DELETE", f"https://registry-1.docker.io/v2/o/app/manifests/sha256:{SHA}", "method_not_allowed"),
    ("docker-hub", "GET", "https://registry-1.docker.io/v1/_ping", "path_not_allowed"),
    ("docker-hub", "POST", "https://auth.docker.io/token", "method_not_allowed"),
    ("docker-hub", "GET", "https://hub.docker.com/v2/repositories/library/alpine/tags", "host_not_allowed"),
    ("docker-hub", "GET", "https://index.docker.io/v1/search?q=alpine", "host_not_allowed"),
    ("docker-hub", "GET", "https://ghcr.io/v2/", "host_not_allowed"),
    ("docker-hub", "PUT", "https://production.cloudflare.docker.com/x", "method_not_allowed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def allowlists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Allowlist]:
    tmp = tmp_path_factory.mktemp("presets")
    out = {name: Allowlist(preset_config(tmp, name).rules) for name in PRESETS}
    out["*"] = Allowlist(preset_config(tmp, *PRESETS).rules)
    return out


def test_every_preset_has_cases() -> None:
    assert {c[0] for c in ALLOWED} == set(PRESETS)
    assert {c[0] for c in DENIED} == set(PRESETS)


@pytest.mark.parametrize(("name", "method", "url"), ALLOWED, ids=[f"{c[0]}:{c[1]} {c[2][:90]}" for c in ALLOWED])  # fmt: skip
def test_real_client_requests_are_allowed(
    allowlists: dict[str, Allowlist], name: str, method: str, url: str
) -> None:
    for which in (name, "*"):  # alone, and among all the presets
        d = decide_url(allowlists[which], method, url).decision
        assert d.allowed, (which, d.reason, d.detail)


@pytest.mark.parametrize(("name", "method", "url", "reason"), DENIED, ids=[f"{c[0]}:{c[1]} {c[2][:90]}" for c in DENIED])  # fmt: skip
def test_what_a_preset_leaves_out_is_denied(
    allowlists: dict[str, Allowlist], name: str, method: str, url: str, reason: str
) -> None:
    d = decide_url(allowlists[name], method, url).decision
    assert not d.allowed and d.reason == reason, (d.reason, d.detail)


def test_the_excluded_paste_and_upload_channels_stay_closed_with_every_preset(
    allowlists: dict[str, Allowlist],
) -> None:
    """Including every preset opens none of the channels a single one leaves out."""
    for method, url in [
        ("POST", "https://api.github.com/gists"),
        ("GET", "https://gist.githubusercontent.com/o/x/raw/y"),
        ("GET", "https://raw.githubusercontent.com/o/r/main/x"),
        ("POST", "https://api.anthropic.com/v1/files"),
        ("POST", "https://api.openai.com/v1/files"),
        ("POST", "https://api.openai.com/v1/uploads"),
        ("PUT", "https://registry.npmjs.org/left-pad"),
        ("PUT", "https://crates.io/api/v1/crates/new"),
        ("POST", "https://upload.pypi.org/legacy/"),
        ("POST", "https://huggingface.co/api/models/o/r/commit/main"),
        ("PUT", "https://registry-1.docker.io/v2/o/app/manifests/latest"),
    ]:
        assert not decide_url(allowlists["*"], method, url).decision.allowed, url


# Secrets: (preset, name, env, the vendor's prefix, the header the client sends it in)
SECRETS = [
    ("github", "github_token", "GITHUB_TOKEN", "ghp_", "authorization"),
    ("npm", "npm_token", "NPM_TOKEN", "npm_", "authorization"),
    ("anthropic", "anthropic_api_key", "ANTHROPIC_API_KEY", "sk-ant-api03-", "x-api-key"),
    ("openai", "openai_api_key", "OPENAI_API_KEY", "sk-", "authorization"),
    ("azure-openai", "azure_openai_api_key", "AZURE_OPENAI_API_KEY", "", "api-key"),
    ("huggingface", "hf_token", "HF_TOKEN", "hf_", "authorization"),
    ("docker-hub", "docker_hub_token", "DOCKER_HUB_TOKEN", "dckr_pat_", "authorization"),
]  # fmt: skip


def test_the_secret_table_is_complete(tmp_path: Path) -> None:
    declared = {(n, s.name) for n in PRESETS for s in preset_config(tmp_path, n).secrets}
    assert declared == {(c[0], c[1]) for c in SECRETS}


@pytest.mark.parametrize(("name", "secret", "env", "prefix", "header"), SECRETS, ids=[c[1] for c in SECRETS])  # fmt: skip
def test_each_secret_is_well_formed(
    tmp_path: Path, name: str, secret: str, env: str, prefix: str, header: str
) -> None:
    cfg = preset_config(tmp_path, name)
    (spec,) = [s for s in cfg.secrets if s.name == secret]
    assert spec.env == env
    assert spec.placeholder.startswith(prefix) and "EGRESSPLACEHOLDER" in spec.placeholder
    assert _PLACEHOLDER.match(spec.placeholder) and _ENV_NAME.match(env)
    assert header in spec.auth_headers and spec.require_placeholder
    if name == "github":  # github.com takes POST on any path: no web session of another account
        assert "cookie" in spec.auth_headers
    assert spec.surfaces == frozenset({"headers"}) and not spec.allow_http
    assert spec.required is False  # an agent without this key still gets the rest
    assert spec.source.kind == "env" and spec.source.env == f"EGRESS_{secret.upper()}"
    # Bound only to exact names the preset's own rules allow.
    allow = Allowlist(cfg.rules)
    for host in spec.hosts:
        assert host.kind == "name"
        assert allow.decide_connect(host.text, 443).allowed, host.text
    # The validator takes the placeholder on a secret of its own, too.
    own = load(tmp_path, "allow: [a.example]\nsecrets:\n  - name: t\n    source: {env: T}\n"
               f"    hosts: [a.example]\n    placeholder: {spec.placeholder}\n")  # fmt: skip
    assert own.secrets[0].placeholder == spec.placeholder


def test_secret_names_env_and_placeholders_do_not_collide(tmp_path: Path) -> None:
    specs = [s for n in PRESETS for s in preset_config(tmp_path, n).secrets]
    for attr in ("name", "env"):
        values = [getattr(s, attr) for s in specs]
        assert len(values) == len(set(values)), attr
    sources = [s.source.env for s in specs]
    assert len(sources) == len(set(sources)) and not set(sources) & {s.env for s in specs}
    for a in specs:
        for b in specs:
            assert a is b or a.placeholder not in b.placeholder, (a.name, b.name)


def test_the_including_file_overrides_a_preset_secret_source(tmp_path: Path) -> None:
    cfg = load(tmp_path, "include: [github]\nsecrets:\n  - name: github_token\n"
               "    source: {vault: {path: agents/github, key: token}}\n")  # fmt: skip
    (spec,) = cfg.secrets
    assert spec.source.kind == "vault" and spec.source.path == "agents/github"
    assert spec.placeholder.startswith("ghp_") and spec.env == "GITHUB_TOKEN"
    assert cfg.origins["secrets[0].source"].file == str(tmp_path / "egress.yaml")
    assert cfg.origins["secrets[0].hosts"].file == "preset:github"


AZURE_MINE = """\
include: [azure-openai]
allow:
  - host: myco-eastus.openai.azure.com
    methods: [POST]
    paths: [/openai/deployments/, /openai/v1/chat/completions, /openai/v1/responses,
            /openai/v1/embeddings, /openai/responses]
  - host: myco-eastus.openai.azure.com
    methods: [GET, DELETE]
    paths: [/openai/v1/responses, /openai/responses]
  - host: myco-eastus.openai.azure.com
    methods: [GET]
    paths: [/openai/v1/models, /openai/models]
secrets:
  - name: azure_openai_api_key
    hosts: [myco-eastus.openai.azure.com]
"""


def test_azure_openai_as_its_header_says_to_use_it(tmp_path: Path) -> None:
    header = (preset_dir() / "azure-openai.yaml").read_text().split("\ndescription:")[0]
    snippet = "\n".join(
        line[4:] for line in header.splitlines() if line.startswith("#   ") or line == "#"
    )
    assert "include: [azure-openai]" in snippet
    cfg = load(tmp_path, AZURE_MINE)
    (spec,) = cfg.secrets
    assert [h.text for h in spec.hosts] == ["myco-eastus.openai.azure.com"]
    assert spec.auth_headers == ("api-key", "ocp-apim-subscription-key", "authorization")
    allow = Allowlist(cfg.rules)
    base = "https://myco-eastus.openai.azure.com"
    for method, path, allowed in [
        ("POST", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", True),
        ("POST", "/openai/v1/chat/completions", True),
        ("GET", "/openai/v1/models", True),
        ("POST", "/openai/files?api-version=2024-10-21", False),
        ("POST", "/openai/v1/files", False),
        ("POST", "/openai/assistants", False),
    ]:
        assert decide_url(allow, method, base + path).decision.allowed is allowed, path
    # Another tenant's resource stays out.
    d = decide_url(allow, "POST", "https://other.openai.azure.com/openai/v1/chat/completions")
    assert d.decision.reason == "host_not_allowed"


# End to end: the anthropic and github presets through the real proxy. Their hosts are
# mapped (upstream.resolve) to a recording HTTPS upstream on a loopback address, port 443,
# with a test CA certificate for those names; nothing leaves the machine.
ANTHROPIC_KEY = "sk-ant-api03-REALkeyFORtheEGRESStest-0123456789abcdefAA"
GITHUB_TOKEN = "ghp_REALtokenFORtheEGRESStest0123456789ab"
CANARIES.update({ANTHROPIC_KEY, GITHUB_TOKEN})
E2E_HOSTS = ["api.anthropic.com", "api.github.com", "github.com"]


def placeholder_of(preset: str) -> str:
    return next(
        line.split(":", 1)[1].strip()
        for line in (preset_dir() / f"{preset}.yaml").read_text().splitlines()
        if line.strip().startswith("placeholder:")
    )


@pytest.fixture(scope="module")
def loopback_443(test_ca: trustme.CA) -> Iterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(*E2E_HOSTS).configure_cert(ctx)
    rng = random.Random()
    for _ in range(20):
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        try:
            up = Upstream(ctx, addr, 443)
        except PermissionError:
            pytest.skip("needs to listen on port 443 (root or CAP_NET_BIND_SERVICE)")
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            raise
        with up:
            yield up
        return
    pytest.fail("no free loopback address for port 443")


@pytest.fixture(scope="module")
def preset_proxy(
    tmp_path_factory: pytest.TempPathFactory, loopback_443: Upstream, test_ca_file: Path
) -> Iterator[tuple[RunningProxy, Upstream]]:
    tmp = tmp_path_factory.mktemp("preset-e2e")
    addr = loopback_443._server.server_address[0]
    cfg = {
        "include": ["anthropic", "github"],
        "listen": {"host": "127.0.0.1", "port": 0},
        "ca": {"cert_path": str(tmp / "agent" / "egress-ca.pem")},
        "upstream": {
            "ca_files": [str(test_ca_file)],
            "resolve": dict.fromkeys(E2E_HOSTS, addr),
            "allow_private": [f"{addr}/32"],
            "dns": "static",
        },
        "audit": {"path": str(tmp / "audit.jsonl")},
    }
    env = proxy_env(EGRESS_ANTHROPIC_API_KEY=ANTHROPIC_KEY, EGRESS_GITHUB_TOKEN=GITHUB_TOKEN)
    p = start_proxy(write_config(tmp, cfg), tmp, env=env)
    try:
        yield p, loopback_443
    finally:
        code = p.stop()
    assert code == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()


def test_anthropic_preset_end_to_end(preset_proxy: tuple[RunningProxy, Upstream]) -> None:
    proxy, upstream = preset_proxy
    upstream.recorder.clear()
    start = len(proxy.audit())
    placeholder = placeholder_of("anthropic")
    # egress run names the variable and placeholder to give the agent.
    assert "ANTHROPIC_API_KEY" in proxy.stderr_path.read_text()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": []}
    headers = {"x-api-key": placeholder, "anthropic-version": "2023-06-01"}
    tls = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=tls, timeout=20) as c:
        r = c.post("https://api.anthropic.com/v1/messages", json=body, headers=headers)
        assert r.status_code == 200, r.text
        (got,) = upstream.requests
        assert got.method == "POST" and got.path == "/v1/messages"
        assert got.headers["x-api-key"] == ANTHROPIC_KEY
        assert json.loads(got.body) == body
        # The echo reflected the key; the client gets the placeholder back.
        assert ANTHROPIC_KEY not in r.text and placeholder in r.text
        upstream.recorder.clear()

        r = c.get("https://api.anthropic.com/v1/models", headers=headers)
        assert r.status_code == 200 and upstream.requests[0].headers["x-api-key"] == ANTHROPIC_KEY
        upstream.recorder.clear()

        # Denied by the preset: the Files API, and a key of the agent's own.
        for method, path, hdrs, reason in [
            ("POST", "/v1/files", headers, "path_not_allowed"),
            ("GET", "/v1/files/file_011/content", headers, "path_not_allowed"),
            ("POST", "/v1/messages", {"x-api-key": "sk-ant-api03-theAGENTSownKEY000000AA"},
             "foreign_credential"),
            ("POST", "/v1/messages", {"authorization": "Bearer sk-ant-api03-theAGENTSownKEY0AA"},
             "foreign_credential"),
        ]:  # fmt: skip
            r = c.request(method, f"https://api.anthropic.com{path}", headers=hdrs, content=b"{}")
            assert r.status_code == 403 and r.headers["x-egress-reason"] == reason, r.text
            assert reason in r.text and ANTHROPIC_KEY not in r.text
        assert upstream.requests == []
    records = [r for r in proxy.audit()[start:] if r["event"] == "request"]
    assert [(r["decision"], r["reason"]) for r in records] == [
        ("allow", "allowed"),
        ("allow", "allowed"),
        ("deny", "path_not_allowed"),
        ("deny", "path_not_allowed"),
        ("deny", "foreign_credential"),
        ("deny", "foreign_credential"),
    ]
    assert records[0]["secrets"] == ["anthropic_api_key"]
    assert ANTHROPIC_KEY not in proxy.outputs()


def test_github_preset_end_to_end_with_git(
    preset_proxy: tuple[RunningProxy, Upstream], tmp_path: Path
) -> None:
    """A real git sends the placeholder as its Basic auth password; the upstream gets the
    token. (The recording upstream is no git server, so git itself then fails.)"""
    proxy, upstream = preset_proxy
    upstream.recorder.clear()
    start = len(proxy.audit())
    placeholder = placeholder_of("github")
    basic = base64.b64encode(f"x-access-token:{placeholder}".encode()).decode()
    env = {
        "HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
    }  # fmt: skip
    done = subprocess.run(
        ["git", "-c", f"http.proxy={proxy.url}", "-c", f"http.sslCAInfo={proxy.ca}",
         "-c", f"http.extraHeader=Authorization: Basic {basic}",
         "ls-remote", "https://github.com/o/r.git"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert GITHUB_TOKEN not in done.stdout + done.stderr
    got = upstream.requests[0]
    assert (got.method, got.path) == ("GET", "/o/r.git/info/refs?service=git-upload-pack")
    real = base64.b64encode(f"x-access-token:{GITHUB_TOKEN}".encode()).decode()
    assert got.headers["authorization"] == f"Basic {real}"
    upstream.recorder.clear()

    tls = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=tls, timeout=20) as c:
        auth = {"authorization": f"token {placeholder}"}
        r = c.post("https://api.github.com/repos/o/r/issues", headers=auth, json={"title": "t"})
        assert r.status_code == 200
        assert upstream.requests[0].headers["authorization"] == f"token {GITHUB_TOKEN}"
        upstream.recorder.clear()
        for method, url, hdrs, reason in [
            ("POST", "https://api.github.com/gists", auth, "path_not_allowed"),
            ("PUT", "https://github.com/o/r", auth, "method_not_allowed"),
            # A web session of another account on github.com, which takes POST anywhere.
            ("POST", "https://github.com/o/r/issues", {"cookie": "user_session=theirs"},
             "foreign_credential"),
            # The token's placeholder on a host it is not bound to.
            ("GET", "https://api.anthropic.com/v1/models", {"x-api-key": placeholder},
             "placeholder_to_unbound_host"),
        ]:  # fmt: skip
            r = c.request(method, url, headers=hdrs)
            assert r.status_code == 403 and r.headers["x-egress-reason"] == reason, r.text
        # Hosts the preset leaves out are refused at CONNECT.
        for url in ["https://gist.github.com/o/x", "https://raw.githubusercontent.com/o/r/m/x"]:
            with pytest.raises(httpx.ProxyError):
                c.get(url)
    assert upstream.requests == []
    connects = [r for r in proxy.audit()[start:] if r["event"] == "connect"]
    assert {(r["host"], r["reason"]) for r in connects if r["decision"] == "deny"} == {
        ("gist.github.com", "host_not_allowed"),
        ("raw.githubusercontent.com", "host_not_allowed"),
    }
    assert GITHUB_TOKEN not in proxy.outputs()
