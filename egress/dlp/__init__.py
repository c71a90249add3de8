"""Outbound data-loss prevention: what an agent says through the hosts it may reach.

- ``catalogue``: the detectors (credential shapes from detect-secrets' plugins, personal
  data validated by python-stdnum, phonenumbers and the Public Suffix List);
- ``fold``: the evasions undone before matching (zero-width characters, homoglyphs,
  compatibility forms);
- ``views``: the encodings looked through (percent, base64 at any alignment, hex, nested);
- ``fields``: a request cut into named fields (JSON paths, form and multipart fields, URL
  query, headers) and the joined views that catch a value split across fields;
- ``scan``: findings (detector, where, how; never the value) and masking.

Pure logic over plain data: no mitmproxy import (addons/dlp.py is the thin hook layer).
"""
