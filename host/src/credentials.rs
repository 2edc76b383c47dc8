//! Pickup-credential issuance (`POST /v1/credentials`): the operator key of
//! the PKI directory signs "the holder of this wallet may collect this
//! parcel from this slot at this site until then".

use p256::ecdsa::SigningKey;
use rand_core::CryptoRngCore;
use tapstack_protocol::crypto::compress;
use tapstack_protocol::pki::{Certificate, Role, TrustStore};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::{PickupCredential, MAX_PARCEL, MAX_SITE};

use crate::Error;

/// Default validity of a credential, days.
pub const DEFAULT_DAYS: u64 = 7;
/// Longest validity the host issues, days.
pub const MAX_DAYS: u64 = 366;

/// What to issue.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub wallet: &'a Certificate,
    pub site: &'a str,
    pub slot: u16,
    pub parcel: &'a str,
    pub days: Option<u64>,
}

fn check_text(field: &'static str, v: &str, max: usize) -> Result<(), Error> {
    if v.is_empty() || v.len() > max {
        return Err(Error::Invalid {
            field,
            reason: "must be 1 to 32 bytes",
        });
    }
    if v.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field,
            reason: "must not contain control characters",
        });
    }
    Ok(())
}

/// Issue a credential signed by `operator`. The wallet certificate must be
/// valid now under `trust` and not revoked.
pub fn issue(
    operator: (&Certificate, &SigningKey),
    trust: &TrustStore,
    revocations: &RevocationList,
    req: &Request<'_>,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<PickupCredential, Error> {
    check_text("site", req.site, MAX_SITE)?;
    check_text("parcel", req.parcel, MAX_PARCEL)?;
    let days = req.days.unwrap_or(DEFAULT_DAYS);
    if days == 0 || days > MAX_DAYS {
        return Err(Error::Invalid {
            field: "days",
            reason: "must be 1 to 366",
        });
    }
    if req.wallet.role() != Role::Wallet {
        return Err(Error::Invalid {
            field: "wallet_certificate",
            reason: "is not a wallet certificate",
        });
    }
    trust
        .verify(req.wallet, Role::Wallet, now, Some(revocations))
        .map_err(|source| Error::Certificate {
            what: "wallet certificate",
            source,
        })?;
    trust
        .verify(operator.0, Role::Operator, now, Some(revocations))
        .map_err(|source| Error::Certificate {
            what: "operator certificate",
            source,
        })?;
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let mut cred = PickupCredential {
        id,
        parcel: req.parcel.to_owned(),
        site: req.site.to_owned(),
        slot: req.slot,
        recipient: compress(&p256::PublicKey::from(req.wallet.public_key())),
        not_after: now.saturating_add(days * 86_400),
        operator: [0; 32],
        signature: [0; 64],
    };
    cred.sign(operator.0, operator.1);
    Ok(cred)
}
