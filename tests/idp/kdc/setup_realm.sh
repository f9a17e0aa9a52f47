#!/usr/bin/env bash
# Create a throw-away MIT Kerberos realm EXAMPLE.TEST in $KWORK and exec krb5kdc
# in the foreground on 127.0.0.1:$KDC_PORT (UDP+TCP), so the caller owns the PID.
# Uses no system-wide config: everything lives in $KWORK.
set -euo pipefail

: "${KWORK:?set KWORK to an empty work directory}"
: "${KDC_PORT:?set KDC_PORT to a free loopback port}"
REALM=EXAMPLE.TEST
mkdir -p "$KWORK"
KWORK=$(cd "$KWORK" && pwd)

export PATH="$PATH:/usr/sbin:/sbin"
export KRB5_CONFIG="$KWORK/krb5.conf"
export KRB5_KDC_PROFILE="$KWORK/kdc.conf"

cat > "$KRB5_CONFIG" <<CONF
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    ticket_lifetime = 10h
    forwardable = true

[realms]
    $REALM = {
        kdc = 127.0.0.1:$KDC_PORT
    }

[domain_realm]
    localhost = $REALM
    127.0.0.1 = $REALM
    other.test = $REALM

[logging]
    kdc = FILE:$KWORK/kdc.log
    default = FILE:$KWORK/krb5lib.log
CONF

cat > "$KRB5_KDC_PROFILE" <<CONF
[kdcdefaults]
    kdc_listen = 127.0.0.1:$KDC_PORT
    kdc_tcp_listen = 127.0.0.1:$KDC_PORT

[realms]
    $REALM = {
        database_name = $KWORK/principal
        key_stash_file = $KWORK/stash
        acl_file = $KWORK/kadm5.acl
        max_life = 10h 0m 0s
        max_renewable_life = 7d 0h 0m 0s
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }

[logging]
    kdc = FILE:$KWORK/kdc.log
CONF
: > "$KWORK/kadm5.acl"

rm -f "$KWORK"/principal* "$KWORK/stash" "$KWORK/http.keytab" "$KWORK/other.keytab"
kdb5_util create -s -r "$REALM" -P masterpw > "$KWORK/setup.log" 2>&1

kadm() { kadmin.local -r "$REALM" -q "$1" >> "$KWORK/setup.log" 2>&1; }
kadm "addprinc -pw alicepw alice"
kadm "addprinc -pw bobpw bob"
kadm "addprinc -pw carolpw carol"
kadm "addprinc -randkey HTTP/localhost"
kadm "addprinc -randkey HTTP/127.0.0.1"
kadm "addprinc -randkey HTTP/other.test"
kadm "ktadd -k $KWORK/http.keytab HTTP/localhost HTTP/127.0.0.1"
kadm "ktadd -k $KWORK/other.keytab HTTP/other.test"

cat > "$KWORK/env.sh" <<ENV
export KRB5_CONFIG='$KWORK/krb5.conf'
export KRB5_KDC_PROFILE='$KWORK/kdc.conf'
export KRB5CCNAME='FILE:$KWORK/alice.ccache'
export KRB5_KTNAME='FILE:$KWORK/http.keytab'
export KRB5RCACHETYPE=none
export KDC_PORT=$KDC_PORT
ENV

exec krb5kdc -n -r "$REALM"
