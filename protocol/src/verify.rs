//! Checks shared by the terminal (during the tap) and the host (on upload):
//! one implementation, so the two can never disagree.

use crate::crypto::{self, compress, RustCrypto, SignatureVerifier};
use crate::error::{CredentialProblem, Error, Party};
use crate::messages::{self, Cvm, WalletBody};
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
    verify_credential_with(cred, site, wallet, trust, revocations, now, &RustCrypto)
}

/// [`verify_credential`] with another signature backend.
pub fn verify_credential_with(
    cred: &PickupCredential,
    site: &str,
    wallet: &Certificate,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
    v: &dyn SignatureVerifier,
) -> Result<(), Error> {
    let operator = trust
        .operator(&cred.operator)
        .ok_or(Error::Credential(CredentialProblem::UnknownOperator))?;
    trust
        .verify_with(operator, Role::Operator, now, revocations, false, v)
        .map_err(Error::cert(Party::Operator))?;
    crypto::verify_with(
        v,
        operator.public_key(),
        &cred.signed_bytes(),
        &cred.signature,
    )
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
    if revocations.is_some_and(|r| r.is_credential_revoked(&cred.id, now)) {
        return Err(Error::Credential(CredentialProblem::Revoked));
    }
    Ok(())
}

/// Check that `endorsement` (a kiosk certificate, DER) endorses
/// `terminal`'s key for `site` on behalf of `operator` (the operator that
/// signed the pickup credential): the chain root → operator → kiosk, the
/// same public key as the terminal certificate, the site among the
/// endorsed ones, and `operator` as its issuer. Returns the kiosk certificate.
#[allow(clippy::too_many_arguments)]
pub fn verify_endorsement_with(
    endorsement: Option<&[u8]>,
    terminal: &Certificate,
    site: &str,
    operator: &[u8; 32],
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
    v: &dyn SignatureVerifier,
) -> Result<Certificate, Error> {
    let der = endorsement.ok_or(Error::NotEndorsed {
        what: "no kiosk endorsement",
    })?;
    let kiosk = Certificate::from_der(der).map_err(Error::cert(Party::Kiosk))?;
    trust
        .verify_with(&kiosk, Role::Kiosk, now, revocations, false, v)
        .map_err(Error::cert(Party::Kiosk))?;
    if kiosk.public_key() != terminal.public_key() {
        return Err(Error::NotEndorsed {
            what: "the kiosk certificate endorses another key",
        });
    }
    if !kiosk.endorses_site(site) {
        return Err(Error::NotEndorsed {
            what: "the kiosk certificate does not name this site",
        });
    }
    let op = trust.operator(operator).ok_or(Error::NotEndorsed {
        what: "the credential's operator is unknown",
    })?;
    if !kiosk.is_signed_by_with(op, v) {
        return Err(Error::NotEndorsed {
            what: "the kiosk is endorsed by another operator than the credential's",
        });
    }
    Ok(kiosk)
}

/// [`verify_endorsement_with`] with the portable backend.
pub fn verify_endorsement(
    endorsement: Option<&[u8]>,
    terminal: &Certificate,
    site: &str,
    operator: &[u8; 32],
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
) -> Result<Certificate, Error> {
    verify_endorsement_with(
        endorsement,
        terminal,
        site,
        operator,
        trust,
        revocations,
        now,
        &RustCrypto,
    )
}

/// The wallet's signed answer, as received or as recorded.
#[derive(Debug, Clone, Copy)]
pub struct WalletHalf<'a> {
    pub th1: &'a [u8; 32],
    pub terminal_sig: &'a [u8],
    pub body: &'a WalletBody,
    /// The body's canonical encoding (what TH2 covers).
    pub body_bytes: &'a [u8],
    pub wallet_sig: &'a [u8],
    /// The hash of the prompt the user must have confirmed, if confirmed
    /// ([`messages::prompt_hash`] of the terminal's own facts).
    pub prompt: [u8; 32],
    /// Whether AUTHORIZE carried `D3` (CVM required).
    pub cvm_required: bool,
}

/// Everything about the wallet's half of a tap that can be checked without
/// the issuer's keys: certificate chain, signature over TH2, the fields
/// the scenario requires, and user presence: a `D3` tap and a pickup of a
/// credential that requires presence need a CVM other than none, and a
/// confirmation must name the prompt the terminal asked for. `wallet_known` says the certificate passed this
/// check before (a terminal's cache of repeat customers): its own signature
/// is then not verified again, its validity and revocation still are.
pub fn verify_wallet_half(
    half: &WalletHalf<'_>,
    wallet: &Certificate,
    wallet_known: bool,
    scenario: &Scenario,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
) -> Result<(), Error> {
    verify_wallet_half_with(
        half,
        wallet,
        wallet_known,
        scenario,
        trust,
        revocations,
        now,
        &RustCrypto,
    )
}

/// [`verify_wallet_half`] with another signature backend.
#[allow(clippy::too_many_arguments)]
pub fn verify_wallet_half_with(
    half: &WalletHalf<'_>,
    wallet: &Certificate,
    wallet_known: bool,
    scenario: &Scenario,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    now: u64,
    v: &dyn SignatureVerifier,
) -> Result<(), Error> {
    let body = half.body;
    if wallet.hash() != &body.wallet_cert_hash {
        return Err(Error::CertificateMismatch {
            party: Party::Wallet,
        });
    }
    trust
        .verify_with(wallet, Role::Wallet, now, revocations, wallet_known, v)
        .map_err(Error::cert(Party::Wallet))?;
    let th2 = messages::th2(half.th1, half.terminal_sig, half.body_bytes);
    crypto::verify_with(v, wallet.public_key(), &th2, half.wallet_sig)
        .map_err(Error::signature(Party::Wallet))?;
    if half.cvm_required && body.cvm == Cvm::None {
        return Err(Error::CvmRequired);
    }
    if body.cvm == Cvm::ConfirmedOnDevice && body.prompt != Some(half.prompt) {
        return Err(Error::PromptMismatch);
    }
    match scenario {
        Scenario::Pay { .. } | Scenario::Order { .. } => {
            if body.cryptogram.is_none() {
                return Err(Error::MissingCryptogram);
            }
            if body.credential.is_some() {
                return Err(Error::UnexpectedField {
                    field: "pickup credential",
                });
            }
        }
        Scenario::Pickup { site } => {
            if body.cryptogram.is_some() {
                return Err(Error::UnexpectedField {
                    field: "cryptogram",
                });
            }
            let cred = body
                .credential
                .as_ref()
                .ok_or(Error::Credential(CredentialProblem::Missing))?;
            verify_credential_with(cred, site, wallet, trust, revocations, now, v)?;
            if cred.requires_presence() && body.cvm == Cvm::None {
                return Err(Error::CvmRequired);
            }
        }
    }
    Ok(())
}
