//! Checks shared by the terminal (during the tap) and the host (on upload):
//! one implementation, so the two can never disagree.

use crate::crypto::{self, compress};
use crate::error::{CredentialProblem, Error, Party};
use crate::messages::{self, WalletBody};
use crate::pki::{Certificate, Role, TrustStore};
use crate::revocation::RevocationList;
use crate::scenario::{PickupCredential, Scenario};

/// Check a pickup credential for `site`, presented by the wallet whose
/// certificate is `wallet`, at time `now`.
pub fn verify_credential(
    cred: &PickupCredential,
    site: &str,
    wallet: &Certificate,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
) -> Result<(), Error> {
    let operator = trust.operator(&cred.operator).ok_or(Error::Credential(CredentialProblem::UnknownOperator))?;
    trust.verify(operator, Role::Operator, now, revocations).map_err(Error::cert(Party::Operator))?;
    crypto::verify(operator.public_key(), &cred.signed_bytes(), &cred.signature)
        .map_err(|_| Error::Credential(CredentialProblem::BadSignature))?;
    if cred.site != site {
        return Err(Error::Credential(CredentialProblem::WrongSite));
    }
    if now > cred.not_after {
        return Err(Error::Credential(CredentialProblem::Expired));
    }
    let wallet_key = p256::PublicKey::from(wallet.public_key());
    if cred.recipient != compress(&wallet_key) {
        return Err(Error::Credential(CredentialProblem::WrongRecipient));
    }
    if revocations.is_some_and(|r| r.is_credential_revoked(&cred.id)) {
        return Err(Error::Credential(CredentialProblem::Revoked));
    }
    Ok(())
}

/// Everything about the wallet's half of a tap that can be checked without
/// the issuer's keys: certificate chain, signature over TH2, and the fields
/// the scenario requires.
#[allow(clippy::too_many_arguments)]
pub fn verify_wallet_half(
    th1: &[u8; 32],
    terminal_sig: &[u8],
    body: &WalletBody,
    body_bytes: &[u8],
    wallet_sig: &[u8],
    wallet: &Certificate,
    scenario: &Scenario,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
) -> Result<(), Error> {
    if wallet.hash() != &body.wallet_cert_hash {
        return Err(Error::CertificateMismatch { party: Party::Wallet });
    }
    trust.verify(wallet, Role::Wallet, now, revocations).map_err(Error::cert(Party::Wallet))?;
    let th2 = messages::th2(th1, terminal_sig, body_bytes);
    crypto::verify(wallet.public_key(), &th2, wallet_sig).map_err(|_| Error::BadSignature { party: Party::Wallet })?;
    match scenario {
        Scenario::Pay { .. } | Scenario::Order { .. } => {
            if body.cryptogram.is_none() {
                return Err(Error::MissingCryptogram);
            }
            if body.credential.is_some() {
                return Err(Error::Credential(CredentialProblem::Unexpected));
            }
        }
        Scenario::Pickup { site } => {
            let cred = body.credential.as_ref().ok_or(Error::Credential(CredentialProblem::Missing))?;
            verify_credential(cred, site, wallet, trust, revocations, now)?;
        }
    }
    Ok(())
}
