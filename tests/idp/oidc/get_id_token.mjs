// Real authorization-code + PKCE login against tests/idp/oidc/server.mjs, printing the id_token.
// Usage: node get_id_token.mjs ISSUER LOGIN PASSWORD [CLIENT_ID CLIENT_SECRET]
// Env: REDIRECT_URI (default http://127.0.0.1:8080/callback; it is never fetched),
//      SCOPE (default "openid profile email groups"), OUTPUT=json (print the whole token response).
// Exit 1 with a message on stderr on any failure (e.g. wrong password -> 401 at the login form).
import crypto from 'node:crypto';
import * as jose from 'jose';

const [issuer, login, password, clientId = 'ucgate', clientSecret = 'ucgate-test-secret'] = process.argv.slice(2);
if (!issuer || !login || password === undefined) {
  process.stderr.write('usage: node get_id_token.mjs ISSUER LOGIN PASSWORD [CLIENT_ID CLIENT_SECRET]\n');
  process.exit(2);
}
const redirectUri = process.env.REDIRECT_URI ?? 'http://127.0.0.1:8080/callback';
const scope = process.env.SCOPE ?? 'openid profile email groups';

const fail = (msg) => { process.stderr.write(`get_id_token: ${msg}\n`); process.exit(1); };
const b64url = (buf) => Buffer.from(buf).toString('base64url');

const jar = new Map();
async function request(url, init = {}) {
  const headers = new Headers(init.headers);
  if (jar.size) headers.set('cookie', [...jar].map(([k, v]) => `${k}=${v}`).join('; '));
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  for (const c of res.headers.getSetCookie()) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    const name = pair.slice(0, i).trim();
    const value = pair.slice(i + 1).trim();
    if (value === '' || /expires=Thu, 01 Jan 1970/i.test(c)) jar.delete(name); else jar.set(name, value);
  }
  return res;
}
const isRedirect = (res) => res.status >= 300 && res.status < 400 && res.headers.has('location');

try {
  const disco = await (await request(new URL('/.well-known/openid-configuration', issuer))).json();
  if (disco.issuer !== issuer) fail(`discovery issuer ${disco.issuer} != ${issuer}`);

  const verifier = b64url(crypto.randomBytes(32));
  const state = b64url(crypto.randomBytes(16));
  const nonce = b64url(crypto.randomBytes(16));
  const auth = new URL(disco.authorization_endpoint);
  auth.search = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
  }).toString();

  // Follow redirects until we land on a page (the login form) or on redirect_uri.
  let url = auth.href;
  let res;
  let callback;
  const follow = async () => {
    for (let hops = 0; hops < 10; hops += 1) {
      if (!isRedirect(res)) return;
      url = new URL(res.headers.get('location'), url).href;
      if (url.startsWith(redirectUri.split('?')[0])) { callback = new URL(url); return; }
      res = await request(url);
    }
    fail('too many redirects');
  };
  res = await request(url);
  await follow();

  if (!callback) {
    if (res.status !== 200) fail(`expected login form, got HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
    const html = await res.text();
    const action = html.match(/<form[^>]*action="([^"]+)"/i)?.[1];
    if (!action) fail(`no login form at ${url}`);
    const form = new URLSearchParams();
    for (const m of html.matchAll(/<input[^>]*type="hidden"[^>]*>/gi)) {
      const name = m[0].match(/name="([^"]*)"/)?.[1];
      if (name) form.set(name, m[0].match(/value="([^"]*)"/)?.[1] ?? '');
    }
    form.set('login', login);
    form.set('password', password);
    url = new URL(action.replace(/&amp;/g, '&'), url).href;
    res = await request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
    });
    if (res.status === 401) fail(`login rejected for ${login} (HTTP 401)`);
    if (!isRedirect(res)) fail(`login POST gave HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
    await follow();
  }
  if (!callback) fail(`never redirected to ${redirectUri} (last HTTP ${res.status} at ${url}): ${(await res.text()).slice(0, 300)}`);

  const q = callback.searchParams;
  if (q.get('error')) fail(`authorization error: ${q.get('error')} ${q.get('error_description') ?? ''}`);
  if (q.get('state') !== state) fail('state mismatch');
  if (q.has('iss') && q.get('iss') !== issuer) fail('iss mismatch in authorization response');
  const code = q.get('code');
  if (!code) fail(`no code in ${callback.href}`);

  res = await request(disco.token_endpoint, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64')}`,
    },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
    }).toString(),
  });
  const tokens = await res.json();
  if (res.status !== 200 || !tokens.id_token) fail(`token endpoint HTTP ${res.status}: ${JSON.stringify(tokens)}`);

  const jwks = jose.createRemoteJWKSet(new URL(disco.jwks_uri));
  const { payload } = await jose.jwtVerify(tokens.id_token, jwks, { issuer, audience: clientId });
  if (payload.nonce !== nonce) fail('nonce mismatch');

  process.stdout.write(`${process.env.OUTPUT === 'json' ? JSON.stringify(tokens) : tokens.id_token}\n`);
} catch (err) {
  fail(err?.stack ?? String(err));
}
