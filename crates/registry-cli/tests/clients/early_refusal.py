"""Sends request bodies of several sizes without credentials, the way clients that do not know
yet whether a registry wants them do (Python requests, oras-py, many scripts), and prints one
JSON line per request: what came back, or the error the client saw instead.

usage: early_refusal.py BASE_URL CA_FILE|- SIZE...
"""
import json
import sys

import requests

base, ca = sys.argv[1], sys.argv[2]
verify = True if ca == "-" else ca
session = requests.Session()
for size in map(int, sys.argv[3:]):
    body = bytes(size)
    for method, path in [
        ("PATCH", "/v2/early/blobs/uploads/0b4e4a6c-4a5e-4c55-9a3c-2f1b6d8e9a10"),
        ("PUT", "/v2/early/manifests/latest"),
        ("POST", "/v2/early/blobs/uploads/?digest=sha256:" + "0" * 64),
    ]:
        line = {"method": method, "size": size}
        try:
            # A fresh connection for some, a reused one for others: both must work.
            client = session if size % 2 == 0 else requests
            r = client.request(method, base + path, data=body, verify=verify, timeout=120)
            line["status"] = r.status_code
            line["code"] = r.json()["errors"][0]["code"]
        except Exception as e:  # the failure the issue is about: a reset instead of the answer
            line["error"] = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps(line), flush=True)
