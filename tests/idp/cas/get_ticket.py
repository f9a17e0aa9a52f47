#!/usr/bin/env python3
"""Log in to the test CAS server through its HTML form and print the service ticket (ST-...).

Usage: get_ticket.py CAS_BASE SERVICE LOGIN PASSWORD
  CAS_BASE  e.g. http://127.0.0.1:PORT/cas   SERVICE  e.g. http://127.0.0.1:8081/cas-callback
Standard library only. The redirect to SERVICE is not followed; the ticket is read from it.
With SERVICE_ENCODED=1, SERVICE is already encoded for a query (as a web client's escape() or
encodeURIComponent() made it) and goes into the login URL as it is, as a browser would send it.
Exit 1 with a message on stderr on failure (wrong password, service not allowed, ...).
"""
import html.parser
import os
import http.cookiejar
import sys
import urllib.error
import urllib.parse
import urllib.request


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class FormParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms = []  # [(action, {name: value})]
        self.errors = []
        self._in_form = False
        self._err_depth = 0  # >0 while inside an alert <div>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._in_form = True
            self.forms.append((a.get("action") or "", {}))
        elif tag == "input" and self._in_form and a.get("name"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            self.forms[-1][1][a["name"]] = a.get("value") or ""
        elif tag == "div" and self._err_depth:
            self._err_depth += 1
        elif tag == "div" and "alert" in (a.get("class") or ""):
            self._err_depth = 1
            self.errors.append("")

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False
        elif tag == "div" and self._err_depth:
            self._err_depth -= 1

    def handle_data(self, data):
        if self._err_depth and data.strip() and data.strip() != "\u00d7":
            self.errors[-1] = (self.errors[-1] + " " + data.strip()).strip()


def fail(msg):
    sys.stderr.write(f"get_ticket: {msg}\n")
    sys.exit(1)


def main():
    if len(sys.argv) != 5:
        sys.stderr.write(__doc__)
        sys.exit(2)
    base, service, login, password = sys.argv[1:]
    base = base.rstrip("/")
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar), NoRedirect
    )

    def fetch(url, data=None):
        req = urllib.request.Request(url, data=data)
        try:
            with opener.open(req, timeout=15) as r:
                return r.status, r.headers, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            fail(f"{url}: {e}")

    if os.environ.get("SERVICE_ENCODED") == "1":
        login_url = f"{base}/login?service={service}"
    else:
        login_url = f"{base}/login?" + urllib.parse.urlencode({"service": service})
    status, _, body = fetch(login_url)
    if status != 200:
        fail(f"GET {login_url} -> HTTP {status}")
    p = FormParser()
    p.feed(body)
    forms = [f for f in p.forms if "username" in f[1] or "password" in f[1]]
    if not forms:
        fail("no login form: " + (" | ".join(e.strip() for e in p.errors) or body[:300]))
    action, fields = forms[0]
    fields["username"] = login
    fields["password"] = password
    post_url = urllib.parse.urljoin(login_url, action or login_url)
    status, headers, body = fetch(post_url, urllib.parse.urlencode(fields).encode())
    location = headers.get("Location") if 300 <= status < 400 else None
    if not location:
        p = FormParser()
        p.feed(body)
        fail(f"login failed (HTTP {status}): " + (" | ".join(e.strip() for e in p.errors) or body[:300]))
    loc = urllib.parse.urljoin(post_url, location)
    ticket = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query).get("ticket", [""])[0]
    if not ticket.startswith("ST-"):
        fail(f"no ticket in redirect: {loc}")
    print(ticket)


if __name__ == "__main__":
    main()
