#!/usr/bin/env bash
# Write a minimal Django project serving django-cas-server at /cas/ into $CASDIR,
# with a ready sqlite DB (users alice/bob/carol, a ServicePattern for loopback services).
# Env: CASDIR (target dir, created), PY (python of the venv from requirements.txt).
# Then: cd "$CASDIR" && "$PY" manage.py runserver 127.0.0.1:$PORT --noreload
set -euo pipefail

: "${CASDIR:?set CASDIR to the project directory to create}"
: "${PY:?set PY to the venv python (tests/idp/cas/.venv/bin/python)}"
mkdir -p "$CASDIR/casproj"
CASDIR=$(cd "$CASDIR" && pwd)

cat > "$CASDIR/manage.py" <<'PYEOF'
#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "casproj.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
PYEOF

: > "$CASDIR/casproj/__init__.py"

cat > "$CASDIR/casproj/urls.py" <<'PYEOF'
from django.urls import include, path

urlpatterns = [
    path("cas/", include("cas_server.urls", namespace="cas_server")),
]
PYEOF

cat > "$CASDIR/casproj/settings.py" <<'PYEOF'
# TEST ONLY: fixed key, MD5 hasher, loopback hosts.
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "ucgate-test-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "cas_server",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.locale.LocaleMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
ROOT_URLCONF = "casproj.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
CAS_TICKET_VALIDITY = 300
CAS_NEW_VERSION_HTML_WARNING = False
CAS_NEW_VERSION_EMAIL_WARNING = False
CAS_INFO_MESSAGES_ORDER = []
CAS_SHOW_POWERED = False
PYEOF

# The DB template is keyed by this script and the installed versions; cached inside the venv.
venv=$(cd "$(dirname "$PY")/.." && pwd)
key=$( { cat "${BASH_SOURCE[0]}"; "$PY" -c 'import django, cas_server; print(django.__version__, cas_server.VERSION)'; } \
  | sha256sum | cut -c1-16)
cache="$venv/ucgate-cas-db-$key.sqlite3"

if [ -f "$cache" ]; then
  cp "$cache" "$CASDIR/db.sqlite3"
  exit 0
fi

rm -f "$CASDIR/db.sqlite3"
cd "$CASDIR"
"$PY" manage.py migrate -v 0 --no-input
"$PY" - <<'PYEOF'
import os
import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "casproj.settings")
django.setup()
from django.contrib.auth.models import User  # noqa: E402
from cas_server.models import ReplaceAttributName, ServicePattern  # noqa: E402

for name, full in (("alice", "Alice Example"), ("bob", "Bob Example"), ("carol", "Carol Example")):
    first, last = full.split()
    User.objects.create_user(name, f"{name}@example.test", f"{name}pw", first_name=first, last_name=last)

sp = ServicePattern.objects.create(
    pos=100,
    name="loopback",
    pattern=r"^https?://(127\.0\.0\.1|localhost)(:\d+)?(/.*)?$",
    user_field="",
    single_log_out=False,
)
for attr in ("username", "email", "first_name", "last_name"):
    ReplaceAttributName.objects.create(name=attr, replace="", service_pattern=sp)
PYEOF

if [ -w "$venv" ]; then
  tmp="$cache.tmp.$$"
  cp db.sqlite3 "$tmp" && mv -f "$tmp" "$cache"
fi
