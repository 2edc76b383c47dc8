//! The protocol crate's error type.

use crate::apdu::{LinkError, StatusWord};
use crate::codec::DecodeError;
use crate::pki::CertError;

/// Whose certificate a [`Error::Certificate`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Terminal,
    Wallet,
    Operator,
    Kiosk,
}

impl core::fmt::Display for Party {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Party::Terminal => "terminal",
            Party::Wallet => "wallet",
            Party::Operator => "operator",
            Party::Kiosk => "kiosk",
        })
    }
}

/// Why a pickup credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialProblem {
    Missing,
    UnknownOperator,
    BadSignature,
    WrongSite,
    Expired,
    WrongRecipient,
    Revoked,
}

impl core::fmt::Display for CredentialProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CredentialProblem::Missing => "missing",
            CredentialProblem::UnknownOperator => "signed by an unknown operator",
            CredentialProblem::BadSignature => "operator signature does not verify",
            CredentialProblem::WrongSite => "issued for another site",
            CredentialProblem::Expired => "expired",
            CredentialProblem::WrongRecipient => "issued to another wallet",
            CredentialProblem::Revoked => "revoked",
        })
    }
}

/// Everything that can go wrong in a tap, on either side, or in a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("APDU transport: {0}")]
    Link(#[from] LinkError),
    #[error("{party} certificate rejected: {source}")]
    Certificate { party: Party, source: CertError },
    #[error("unexpected {got} while {state}")]
    UnexpectedMessage {
        state: &'static str,
        got: &'static str,
    },
    #[error("no tapstack wallet on this phone (SELECT answered {sw})")]
    NotAWallet { sw: StatusWord },
    #[error("wallet refused: {} ({sw})", sw.meaning())]
    WalletRefused { sw: StatusWord },
    #[error("no protocol version in common")]
    NoCommonVersion,
    #[error("the other side does not support {scenario}")]
    ScenarioUnsupported { scenario: &'static str },
    #[error("{party} signature does not verify")]
    BadSignature { party: Party },
    /// A signature in high-S form (`s > n/2`): refused even when it would
    /// verify, so no one but the signer can make a second valid encoding.
    #[error("{party} signature is not in low-S form")]
    HighSSignature { party: Party },
    #[error("secure messaging MAC does not verify")]
    BadMac,
    /// The crypto backend failed on our own side (RNG, key loading).
    #[error("crypto backend: {0}")]
    Crypto(crate::crypto::CryptoError),
    #[error("key share is not a P-256 point")]
    BadKeyShare,
    #[error("{party} certificate does not match the hash it was announced with")]
    CertificateMismatch { party: Party },
    #[error("user presence required (amount above the CVM limit, D3, or a pickup credential that requires it), but the wallet verified no one")]
    CvmRequired,
    #[error("the confirmation names another prompt than this tap's")]
    PromptMismatch,
    #[error("terminal not endorsed for this pickup: {what}")]
    NotEndorsed { what: &'static str },
    #[error("the phone answered the timed exchange in {micros} µs, above the {bound} µs a phone in this reader's field takes (a relay?)")]
    Relayed { micros: u32, bound: u32 },
    #[error("transaction counter {got} is not above the last seen {last}")]
    AtcRegression { last: u32, got: u32 },
    #[error("pickup credential {0}")]
    Credential(CredentialProblem),
    #[error("no issuer cryptogram for a payment")]
    MissingCryptogram,
    #[error("{field} present where the scenario has none")]
    UnexpectedField { field: &'static str },
    #[error("receipt does not match the authorized scenario")]
    ReceiptMismatch,
    #[error("record chain broken: {what}")]
    Chain { what: &'static str },
}

impl Error {
    pub(crate) fn cert(party: Party) -> impl Fn(CertError) -> Error {
        move |source| Error::Certificate { party, source }
    }

    /// A failed signature check of `party`: high-S or not verifying.
    pub(crate) fn signature(party: Party) -> impl Fn(crate::crypto::CryptoError) -> Error {
        move |e| match e {
            crate::crypto::CryptoError::HighS => Error::HighSSignature { party },
            _ => Error::BadSignature { party },
        }
    }
}
