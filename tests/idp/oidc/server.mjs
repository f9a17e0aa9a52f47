// Test-only OpenID provider (panva/oidc-provider) for ucgate integration tests.
// Listens on 127.0.0.1:$PORT (0 = pick a free port). The FIRST stdout line is JSON:
//   {"issuer":"http://127.0.0.1:NNNN","client_id":"ucgate","client_secret":"...",...,"pid":N}
// Everything else (notices, warnings, request log) goes to stderr.
// Env: PORT, REDIRECT_URI (comma-separated; default http://127.0.0.1:8080/callback),
//      ID_TOKEN_TTL (seconds, default 3600), CLIENT_SECRET, OTHER_CLIENT_SECRET.
// Test controls: POST /test/rotate-keys[?keep_old=1]  -> {"kid":new,"published":[kids]}
//                POST /test/sign {"header":{...},"claims":{...}} -> a compact JWS of exactly these
//                header and claims, RS256 with the current signing key (kid added when absent):
//                tokens the provider would never issue, but signed as only it can.
import crypto from 'node:crypto';
import http from 'node:http';
import { format } from 'node:util';

// oidc-provider prints NOTICEs with console.info (stdout). Keep stdout for the ready line only.
const toStderr = (...args) => { process.stderr.write(`${format(...args)}\n`); };
console.log = toStderr;
console.info = toStderr;
console.warn = toStderr;

const { default: Provider } = await import('oidc-provider');
// Internal (no "exports" map in oidc-provider 9.x): used only for /test/rotate-keys.
const { default: initializeKeystore } = await import('oidc-provider/lib/helpers/initialize_keystore.js');

const PORT = Number(process.env.PORT ?? 0);
const REDIRECT_URIS = (process.env.REDIRECT_URI ?? 'http://127.0.0.1:8080/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);
const ID_TOKEN_TTL = Number(process.env.ID_TOKEN_TTL ?? 3600);
const CLIENT_ID = 'ucgate';
const CLIENT_SECRET = process.env.CLIENT_SECRET ?? 'ucgate-test-secret';
const OTHER_CLIENT_ID = 'other';
const OTHER_CLIENT_SECRET = process.env.OTHER_CLIENT_SECRET ?? 'other-test-secret';

const ACCOUNTS = {
  alice: { password: 'alicepw', name: 'Alice Example', groups: ['admins', 'users'] },
  bob: { password: 'bobpw', name: 'Bob Example', groups: ['users'] },
  carol: { password: 'carolpw', name: 'Carol Example', groups: [] },
};

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k-${crypto.randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };
}
let signingKeys = [newSigningKey()];

function claimsFor(id) {
  const a = ACCOUNTS[id];
  return {
    sub: id,
    preferred_username: id,
    name: a.name,
    email: `${id}@example.test`,
    email_verified: true,
    groups: a.groups,
  };
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function loginPage(uid, clientId, error) {
  return `<!DOCTYPE html><html><head><title>Sign in</title></head><body>
<h1>Sign in to ${esc(clientId)}</h1>${error ? `<p class="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<input type="hidden" name="uid" value="${esc(uid)}">
<label>Login <input name="login" required autofocus></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button>
</form></body></html>\n`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 65536) throw new Error('body too large');
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  res.end(body);
}

let provider;
let issuer;

async function handleInteraction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return send(res, 404, 'text/plain', 'not found\n');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== m[1]) return send(res, 400, 'text/plain', 'interaction mismatch\n');
  const clientId = details.params.client_id;

  if (details.prompt.name === 'consent') { // normally skipped thanks to loadExistingGrant
    const grant = new provider.Grant({ accountId: details.session.accountId, clientId });
    grant.addOIDCScope(String(details.params.scope ?? 'openid'));
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET' && !m[2]) {
    return send(res, 200, 'text/html; charset=utf-8', loginPage(details.uid, clientId));
  }
  if (req.method === 'POST' && m[2]) {
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const account = Object.hasOwn(ACCOUNTS, login) ? ACCOUNTS[login] : undefined;
    if (!account || account.password !== (form.get('password') ?? '')) {
      return send(res, 401, 'text/html; charset=utf-8', loginPage(details.uid, clientId, 'Invalid login or password'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'text/plain', 'method not allowed\n');
}

async function handleTest(req, res, url) {
  if (url.pathname === '/test/rotate-keys' && req.method === 'POST') {
    const fresh = newSigningKey();
    const keepOld = url.searchParams.get('keep_old') === '1';
    signingKeys = keepOld ? [fresh, ...signingKeys] : [fresh];
    // Newest first: selectForSign picks the first matching key; jwks_uri publishes all of them.
    initializeKeystore.call(provider, { keys: signingKeys });
    return send(res, 200, 'application/json', `${JSON.stringify({ kid: fresh.kid, published: signingKeys.map((k) => k.kid) })}\n`);
  }
  if (url.pathname === '/test/sign' && req.method === 'POST') {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const { header, claims } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const key = signingKeys[0];
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const input = `${b64({ alg: 'RS256', kid: key.kid, ...header })}.${b64(claims)}`;
    const signature = crypto.sign('sha256', Buffer.from(input), crypto.createPrivateKey({ key, format: 'jwk' }));
    return send(res, 200, 'application/jwt', `${input}.${signature.toString('base64url')}\n`);
  }
  if (url.pathname === '/test/keys' && req.method === 'GET') {
    return send(res, 200, 'application/json', `${JSON.stringify({ kid: signingKeys[0].kid, published: signingKeys.map((k) => k.kid) })}\n`);
  }
  return send(res, 404, 'text/plain', 'not found\n');
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  let p;
  if (url.pathname.startsWith('/interaction/')) p = handleInteraction(req, res, url);
  else if (url.pathname.startsWith('/test/')) p = Promise.resolve(handleTest(req, res, url));
  else return provider.callback()(req, res);
  p.catch((err) => {
    console.error('handler error:', err);
    if (!res.headersSent) send(res, 400, 'text/plain', `error: ${err.message}\n`);
    else res.end();
  });
  return undefined;
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', resolve);
});
issuer = `http://127.0.0.1:${server.address().port}`;

const clientDefaults = {
  token_endpoint_auth_method: 'client_secret_basic',
  // "native" lets a loopback redirect_uri match with any port (RFC 8252 7.3): tests may pick the sidecar port late.
  application_type: 'native',
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: REDIRECT_URIS,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  id_token_signed_response_alg: 'RS256',
};

provider = new Provider(issuer, {
  clients: [
    { ...clientDefaults, client_id: CLIENT_ID, client_secret: CLIENT_SECRET },
    { ...clientDefaults, client_id: OTHER_CLIENT_ID, client_secret: OTHER_CLIENT_SECRET },
  ],
  jwks: { keys: signingKeys },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async () => true },
    rpInitiatedLogout: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    IdToken: ID_TOKEN_TTL,
    AccessToken: 3600,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
    RefreshToken: 86400,
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  async findAccount(ctx, id) {
    if (!Object.hasOwn(ACCOUNTS, id)) return undefined;
    return { accountId: id, claims: async () => claimsFor(id) };
  },
  // Auto-consent: grant whatever the client asks for, so login is the only interaction.
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    grant ??= new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    await grant.save();
    return grant;
  },
  renderError(ctx, out) {
    ctx.type = 'text/plain';
    ctx.body = `${out.error}: ${out.error_description ?? ''}\n`;
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error:', err));

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

process.stdout.write(`${JSON.stringify({
  issuer,
  client_id: CLIENT_ID,
  client_secret: CLIENT_SECRET,
  other_client_id: OTHER_CLIENT_ID,
  other_client_secret: OTHER_CLIENT_SECRET,
  redirect_uris: REDIRECT_URIS,
  id_token_ttl: ID_TOKEN_TTL,
  pid: process.pid,
})}\n`);
