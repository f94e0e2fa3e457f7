//! Tokens of a real identity provider (RS256 and ES256, keys from a JWKS file, issuer and
//! audience checked), and the demo login switched off.

use std::time::{SystemTime, UNIX_EPOCH};

use gateway::{Gateway, GatewaySettings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use service_kit::config::Env;

use crate::common::{Config, SECRET, TestGateway, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "seckill-api";
const ROUTE: &str = "[[routes]]\nprefix = \"/api/private\"\nrewrite = \"/private\"\npool = \"app\"\nauth = \"user\"\n";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn auth_table(login: bool) -> String {
    format!(
        "login = {login}\n[auth.identity_provider]\njwks_file = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nleeway_secs = 30\n",
        fixture("idp-jwks.json")
    )
}

async fn setup(login: bool) -> (TestGateway, TestUpstream) {
    let upstream = TestUpstream::start("app", Mode::Echo).await;
    let config =
        Config::new(&format!("app = [\"{}\"]", upstream.url()), ROUTE).auth(&auth_table(login));
    (TestGateway::start(&config).await, upstream)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Claims a provider would issue for `sub`, expiring `exp_in` seconds from now.
fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + exp_in})
}

/// The fixture key that signs `alg` tokens.
fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_der(&std::fs::read(fixture("idp-rsa.der")).expect("rsa fixture"))
        }
        _ => EncodingKey::from_ec_der(&std::fs::read(fixture("idp-ec.der")).expect("ec fixture")),
    }
}

/// `claims` signed with the fixture key of `alg`, under `kid`.
fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key(alg)).expect("sign")
}

async fn identity(gw: &TestGateway, token: &str) -> (u16, Value) {
    let (status, _, echo) = read(gw.get("/api/private/x", Some(token)).await).await;
    (status, echo)
}

#[tokio::test]
async fn rs256_and_es256_tokens_of_the_provider_are_accepted_with_their_claims_checked() {
    let (gw, _upstream) = setup(true).await;
    let (status, echo) = identity(
        &gw,
        &sign(Algorithm::RS256, "test-rsa", &claims("alice", 60)),
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-user-id"], "alice");
    assert_eq!(echo["headers"]["x-user-role"], "user");
    let mut admin = claims("root", 60);
    admin["role"] = json!("admin");
    let (status, echo) = identity(&gw, &sign(Algorithm::ES256, "test-ec", &admin)).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-user-role"], "admin");
    // Expired, but within the provider's clock-skew leeway (30 s): accepted.
    let (status, _) = identity(
        &gw,
        &sign(Algorithm::RS256, "test-rsa", &claims("bob", -10)),
    )
    .await;
    assert_eq!(status, 200);
    // The gateway's own login still works beside the provider.
    let own = gw.token("carol").await;
    assert_eq!(identity(&gw, &own).await.0, 200);

    let mut wrong_audience = claims("alice", 60);
    wrong_audience["aud"] = json!("another-api");
    let mut wrong_issuer = claims("alice", 60);
    wrong_issuer["iss"] = json!("https://evil.example.test/");
    let mut no_audience = claims("alice", 60);
    no_audience.as_object_mut().expect("object").remove("aud");
    let refused = [
        (
            "wrong audience",
            sign(Algorithm::RS256, "test-rsa", &wrong_audience),
        ),
        (
            "wrong issuer",
            sign(Algorithm::RS256, "test-rsa", &wrong_issuer),
        ),
        (
            "no audience",
            sign(Algorithm::RS256, "test-rsa", &no_audience),
        ),
        (
            "expired past the leeway",
            sign(Algorithm::RS256, "test-rsa", &claims("alice", -120)),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, "nobody", &claims("alice", 60)),
        ),
        ("no kid", {
            let header = Header::new(Algorithm::RS256);
            jsonwebtoken::encode(&header, &claims("alice", 60), &key(Algorithm::RS256))
                .expect("sign")
        }),
        // An ES256 token naming the RSA key's kid: the key decides the algorithm.
        (
            "algorithm of another key",
            sign(Algorithm::ES256, "test-rsa", &claims("alice", 60)),
        ),
        // The encryption key in the document is not a signing key.
        (
            "encryption key",
            sign(Algorithm::RS256, "test-enc", &claims("alice", 60)),
        ),
    ];
    for (what, token) in refused {
        let problem = expect_problem(gw.get("/api/private/x", Some(&token)).await, 401).await;
        assert_eq!(problem["status"], 401, "{what}: {problem}");
    }
}

#[tokio::test]
async fn with_the_demo_login_off_only_the_providers_tokens_count() {
    let (gw, _upstream) = setup(false).await;
    let response = gw.post_login(&json!({"user": "alice"})).await;
    expect_problem(response, 404).await;
    // A token signed with the gateway's secret (still set in the environment) is refused.
    let own = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "role": "admin", "iss": "seckill-gateway", "iat": now(), "exp": now() + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    expect_problem(gw.get("/api/private/x", Some(&own)).await, 401).await;
    let token = sign(Algorithm::RS256, "test-rsa", &claims("alice", 60));
    assert_eq!(identity(&gw, &token).await.0, 200);
}

/// A gateway configured with `auth` fails to start with a message containing `expected`.
fn refused_config(auth: &str, expected: &str) {
    let path = std::env::temp_dir().join(format!(
        "gateway-idp-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    let config = Config::new("app = [\"http://127.0.0.1:9\"]", ROUTE).auth(auth);
    std::fs::write(&path, config.render()).expect("write config");
    let path_text = path.display().to_string();
    let settings = GatewaySettings::from_source(&Env::from_pairs(vec![
        ("GATEWAY_CONFIG", path_text.as_str()),
        ("JWT_SECRET", SECRET),
    ]))
    .expect("settings");
    let error = Gateway::start(settings).expect_err("the configuration must be refused");
    let _ = std::fs::remove_file(&path);
    assert!(error.to_string().contains(expected), "{error}");
}

#[test]
fn configurations_that_could_accept_no_token_or_a_bad_key_file_are_refused() {
    refused_config("login = false", "identity_provider");
    let empty = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&empty, r#"{"keys": []}"#).expect("write jwks");
    refused_config(
        &format!(
            "[auth.identity_provider]\njwks_file = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n",
            empty.display()
        ),
        "no RS256 or ES256 key",
    );
    let _ = std::fs::remove_file(&empty);
    refused_config(
        &format!(
            "[auth.identity_provider]\njwks_file = \"/nonexistent/jwks.json\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n"
        ),
        "/nonexistent/jwks.json",
    );
}
