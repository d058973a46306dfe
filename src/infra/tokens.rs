//! Single-purpose tokens sent by e-mail (verify an address, reset a password): signed, expiring,
//! and bound to a purpose so one cannot stand in for the other. Reset tokens also carry the
//! account's password generation, so a token stops working once the password has changed.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A key for one purpose, derived from a master secret (HMAC-SHA-256 of the purpose label, as
/// HKDF-Expand does for a single block): keys of different purposes are independent.
pub fn derive_key(master: &str, purpose: &str) -> zeroize::Zeroizing<[u8; 32]> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(master.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(purpose.as_bytes());
    zeroize::Zeroizing::new(mac.finalize().into_bytes().into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
}

impl Purpose {
    fn audience(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "arosaje:verify-email",
            Purpose::ResetPassword => "arosaje:reset-password",
        }
    }

    /// How long a token stays valid.
    pub fn ttl_secs(self) -> i64 {
        match self {
            Purpose::VerifyEmail => 7 * 24 * 3600,
            Purpose::ResetPassword => 3600,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    aud: String,
    exp: i64,
    /// Password generation the token was issued for (reset tokens).
    generation: u32,
}

pub struct ActionTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl ActionTokens {
    /// `master`: the token master key (`JWT_SECRET`); the key used here is derived from it for
    /// this purpose alone, so an access token never verifies here, nor the other way round.
    pub fn new(master: &str) -> Self {
        let key = derive_key(master, "arosaje/action-tokens/v1");
        Self {
            encoding: EncodingKey::from_secret(key.as_ref()),
            decoding: DecodingKey::from_secret(key.as_ref()),
        }
    }

    pub fn issue(
        &self,
        purpose: Purpose,
        user_id: Uuid,
        generation: u32,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sub: user_id,
            aud: purpose.audience().into(),
            exp: chrono::Utc::now().timestamp() + purpose.ttl_secs(),
            generation,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The user and generation of a valid, unexpired token for `purpose`.
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<(Uuid, u32)> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[purpose.audience()]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &validation)
            .ok()
            .map(|data| (data.claims.sub, data.claims.generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_serves_only_its_purpose() {
        let tokens = ActionTokens::new("secret");
        let user = Uuid::new_v4();
        let token = tokens.issue(Purpose::VerifyEmail, user, 0).unwrap();
        assert_eq!(tokens.verify(Purpose::VerifyEmail, &token), Some((user, 0)));
        assert_eq!(tokens.verify(Purpose::ResetPassword, &token), None);
        assert_eq!(
            ActionTokens::new("other").verify(Purpose::VerifyEmail, &token),
            None
        );
        assert_eq!(tokens.verify(Purpose::VerifyEmail, "garbage"), None);
    }
}
