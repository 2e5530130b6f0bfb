//! JWT verification (`auth::Verifier`, the check behind `Hub::verify`)
//! with two verifiers: the default `[auth]` secret, and four keys by kid
//! with audience, issuer, leeway, a nested client type claim and narrower
//! permissions. The first input byte selects: `p` `h` `e` `c` `w` sign
//! `<header JSON>\n<claims JSON>` with a key (so the fuzzer reaches the
//! claims), `m` mints structured claims with chanhub's own `mint_for`,
//! anything else is followed by the token text as is.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

use chanhub::auth::{ClientType, TokenClaims};

/// Pattern segments for the narrowing claims, so most entries parse.
const SEGMENTS: &[&str] = &[
    "session", "public", "events", "math", "worker", "status", "1", "*", "**", "{a,b}", "a*",
];

#[derive(Arbitrary, Debug)]
enum Entry {
    Segments(Vec<u8>),
    Text(String),
}

impl Entry {
    fn build(&self) -> String {
        match self {
            Entry::Segments(picks) => picks
                .iter()
                .take(8)
                .map(|&i| SEGMENTS[usize::from(i) % SEGMENTS.len()])
                .collect::<Vec<_>>()
                .join(":"),
            Entry::Text(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Exp {
    /// Two minutes and more from now.
    Future(u32),
    /// Two minutes and more ago.
    Past(u32),
    Absolute(u64),
}

#[derive(Arbitrary, Debug)]
struct Mint {
    rotation: bool,
    /// 0: none, 1-4: `hs-1` `ec-1` `ed-1` `rs-1`, else `kid_text`.
    kid: u8,
    kid_text: String,
    sub: String,
    exp: Exp,
    iat: Option<u64>,
    client_type: u8,
    channels: Option<Vec<Entry>>,
    publish: Option<Vec<Entry>>,
    capabilities: Option<Vec<Entry>>,
    call: Option<Vec<Entry>>,
    serve: Option<Vec<Entry>>,
    max_slots: Option<u32>,
}

fn list(entries: &Option<Vec<Entry>>) -> Option<Vec<String>> {
    entries
        .as_ref()
        .map(|l| l.iter().take(16).map(Entry::build).collect())
}

impl Mint {
    fn build(&self) -> checks::MintCase {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let kid = match self.kid % 6 {
            0 => None,
            1 => Some("hs-1".to_owned()),
            2 => Some("ec-1".to_owned()),
            3 => Some("ed-1".to_owned()),
            4 => Some("rs-1".to_owned()),
            _ => Some(self.kid_text.clone()),
        };
        checks::MintCase {
            rotation: self.rotation,
            kid,
            claims: TokenClaims {
                sub: self.sub.clone(),
                exp: match self.exp {
                    Exp::Future(s) => now + 120 + u64::from(s),
                    Exp::Past(s) => now.saturating_sub(120 + u64::from(s)),
                    Exp::Absolute(t) => t,
                },
                iat: self.iat,
                client_type: ClientType::ALL[usize::from(self.client_type % 3)],
                channels: list(&self.channels),
                publish: list(&self.publish),
                capabilities: list(&self.capabilities),
                max_slots: self.max_slots,
                call: list(&self.call),
                serve: list(&self.serve),
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((b'm', rest)) = data.split_first() {
        if let Ok(mint) = Mint::arbitrary_take_rest(Unstructured::new(rest)) {
            checks::minted_token(&mint.build());
        }
    } else if let Some(token) = checks::token_from_input(data) {
        checks::token_text(&token);
    }
});
