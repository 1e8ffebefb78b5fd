"""A real SMTP server for moonfrp's email tests (aiosmtpd): every message it takes is written to
OUT/NNNN.json (envelope sender and recipients, the decoded headers and body, whether the session
was TLS and authenticated). STARTTLS or implicit TLS with the given certificate; AUTH PLAIN/LOGIN against one
user and password, required when given. Prints `ready PORT` once it listens."""
import argparse
import email
import email.policy
import json
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, out):
        self.out = out
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        path = os.path.join(self.out, "%04d.json" % self.n)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with open(path + ".tmp", "w") as f:
            json.dump(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "headers": {k.lower(): str(v) for k, v in message.items()},
                    "body": message.get_content(),
                    "tls": server.transport.get_extra_info("ssl_object") is not None,
                    "authenticated": bool(session.authenticated),
                },
                f,
            )
        os.rename(path + ".tmp", path)
        return "250 2.0.0 Ok: stored as message %d" % self.n


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)

    return check


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()
    kw = {}
    if a.mode != "plain":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
        if a.mode == "starttls":
            kw.update(tls_context=ctx, require_starttls=True)
        else:
            kw.update(ssl_context=ctx)
    if a.user:
        kw.update(
            authenticator=authenticator(a.user, a.password),
            auth_required=True,
            # Implicit TLS is invisible to aiosmtpd: it would never offer AUTH.
            auth_require_tls=a.mode == "starttls",
        )
    c = Controller(Store(a.out), hostname="127.0.0.1", port=a.port, **kw)
    c.start()
    print("ready", a.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
