"""Pushes a file with oras-py's chunked upload (16 MiB PATCH chunks sent before any credentials,
then again with HTTP Basic after the 401) and pulls it back; prints "ok <digest>".

usage: oras_push.py HOST:PORT http|https CA_FILE|- USER PASSWORD FILE
"""
import hashlib
import os
import sys
import tempfile

import oras.provider

host, scheme, ca, user, password, path = sys.argv[1:7]
registry = oras.provider.Registry(
    hostname=host,
    insecure=scheme == "http",
    tls_verify=True if ca == "-" else ca,
    auth_backend="basic",
)
registry.auth.set_basic_auth(user, password)
target = f"{host}/oras/chunked:v1"
os.chdir(os.path.dirname(path))
response = registry.push(target=target, files=[os.path.basename(path)], do_chunked=True)
if response.status_code != 201:
    sys.exit(f"push answered {response.status_code}: {response.text}")
with tempfile.TemporaryDirectory() as out:
    pulled = registry.pull(target=target, outdir=out)
    if len(pulled) != 1:
        sys.exit(f"pulled {pulled}")
    with open(pulled[0], "rb") as got, open(path, "rb") as sent:
        if got.read() != sent.read():
            sys.exit("pulled content differs")
with open(path, "rb") as f:
    print("ok sha256:" + hashlib.sha256(f.read()).hexdigest())
