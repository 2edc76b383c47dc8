//! Scenarios: what a tap is for. Money is integer minor units plus an
//! ISO 4217 alphabetic code — never floats.

use crate::codec::{fixed, text, u16_be, u32_be, u64_be, Codec, DecodeError};
use crate::crypto::{sha256, POINT_LEN, SIG_LEN};
use crate::tlv::{self, Reader};

/// An active ISO 4217 alphabetic currency code (see [`Currency::parse`]):
/// every value of this type is in the table, so its
/// [`exponent`](Currency::exponent) is the one ISO lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// Why a text is not a [`Currency`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// Not three capital letters.
    #[error("{0:?} is not an ISO 4217 currency code: three capital letters such as \"CNY\"")]
    Malformed(String),
    /// Three capital letters, but no active ISO 4217 currency (`XYZ`), or
    /// one without minor units (`XAU`, `XTS`, `XXX`).
    #[error("{0} is not an active ISO 4217 currency code")]
    Unknown(String),
}

impl Currency {
    /// An active ISO 4217 code such as `CNY`; `None` otherwise (see
    /// [`Currency::parse`] for why).
    pub fn new(code: &str) -> Option<Self> {
        Self::parse(code).ok()
    }

    /// An active ISO 4217 code, or why not.
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let shown = || code.chars().take(16).collect::<String>();
        let b: [u8; 3] = code
            .as_bytes()
            .try_into()
            .map_err(|_| CurrencyError::Malformed(shown()))?;
        if !b.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::Malformed(shown()));
        }
        match crate::iso4217::exponent(&b) {
            Some(_) => Ok(Currency(b)),
            None => Err(CurrencyError::Unknown(shown())),
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let arr = fixed::<3>("currency", b)?;
        crate::iso4217::exponent(&arr)
            .map(|_| Currency(arr))
            .ok_or(DecodeError::InvalidValue { field: "currency" })
    }

    pub fn as_bytes(&self) -> &[u8; 3] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Number of minor-unit digits, as ISO 4217 lists it (0 for JPY, 3 for
    /// KWD, 4 for CLF).
    pub fn exponent(&self) -> u32 {
        crate::iso4217::exponent(&self.0).map_or(2, u32::from)
    }
}

/// The code as text (`"CNY"`); only an active ISO 4217 code deserializes.
#[cfg(feature = "serde")]
impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An optional [`Amount`] as two fields of the object around it — `amount`
/// (minor units) and `currency` (the code), both `null` without an amount
/// (a pickup) — for `#[serde(flatten, with = "amount_fields")]`. This is
/// the shape of the terminal's API (docs/terminal-api.yaml).
#[cfg(feature = "serde")]
pub mod amount_fields {
    use super::{Amount, Currency};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Fields {
        amount: Option<u64>,
        currency: Option<Currency>,
    }

    pub fn serialize<S: Serializer>(a: &Option<Amount>, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            amount: a.map(|a| a.minor),
            currency: a.map(|a| a.currency),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Amount>, D::Error> {
        match Fields::deserialize(d)? {
            Fields {
                amount: Some(minor),
                currency: Some(currency),
            } => Ok(Some(Amount { minor, currency })),
            Fields {
                amount: None,
                currency: None,
            } => Ok(None),
            _ => Err(serde::de::Error::custom(
                "amount and currency come together or not at all",
            )),
        }
    }
}

impl core::fmt::Display for Currency {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in minor units of a currency: the one money type, from the
/// CLI's and the API's decimal text ([`Amount::parse`]) through scenarios,
/// records, the terminal's views and the host's ledger to the printed
/// `12.50 CNY` ([`Display`](core::fmt::Display)). With the `serde` feature it is
/// `{"minor": 1250, "currency": "CNY"}` on its own, and [`amount_fields`]
/// carries an optional one as the `amount`/`currency` pair of the API's
/// objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Amount {
    pub minor: u64,
    pub currency: Currency,
}

impl Amount {
    /// Parse a decimal string such as `12.50` for `currency`: at most the
    /// currency's number of fraction digits, no sign, no exponent.
    pub fn parse(s: &str, currency: Currency) -> Option<Self> {
        let exp = currency.exponent();
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.is_empty() || int.len() > 15 || frac.len() > exp as usize {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || (s.contains('.') && frac.is_empty())
        {
            return None;
        }
        let mut minor: u64 = int.parse().ok()?;
        for _ in 0..exp {
            minor = minor.checked_mul(10)?;
        }
        let mut f: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        for _ in frac.len()..exp as usize {
            f = f.checked_mul(10)?;
        }
        Some(Amount {
            minor: minor.checked_add(f)?,
            currency,
        })
    }
}

impl core::fmt::Display for Amount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let exp = self.currency.exponent();
        let div = 10u64.pow(exp);
        if exp == 0 {
            write!(f, "{} {}", self.minor, self.currency)
        } else {
            write!(
                f,
                "{}.{:0width$} {}",
                self.minor / div,
                self.minor % div,
                self.currency,
                width = exp as usize
            )
        }
    }
}

/// Limits on carts, so a hostile terminal cannot make a phone allocate.
pub const MAX_CART_ITEMS: usize = 64;
pub const MAX_SKU: usize = 32;
pub const MAX_ITEM_NAME: usize = 64;
pub const MAX_QTY: u32 = 9999;
pub const MAX_SITE: usize = 32;
pub const MAX_PARCEL: usize = 32;
pub const MAX_ORDER_NUMBER: usize = 16;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    pub sku: String,
    pub name: String,
    pub qty: u32,
    /// Price of one unit in minor units.
    pub unit_price: u64,
}

/// An itemized order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    pub currency: Currency,
    pub items: Vec<CartItem>,
}

impl Cart {
    /// Sum of `qty × unit_price`; `None` on overflow.
    pub fn total(&self) -> Option<u64> {
        self.items.iter().try_fold(0u64, |acc, i| {
            acc.checked_add(u64::from(i.qty).checked_mul(i.unit_price)?)
        })
    }

    /// SHA-256 of the canonical encoding: what the tap binds.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&[&self.to_bytes()])
    }

    /// Check the cart is well-formed (used before encoding local input).
    pub fn validate(&self) -> Result<u64, DecodeError> {
        if self.items.is_empty() || self.items.len() > MAX_CART_ITEMS {
            return Err(DecodeError::InvalidValue {
                field: "cart items",
            });
        }
        for i in &self.items {
            if i.sku.is_empty()
                || i.sku.len() > MAX_SKU
                || i.name.len() > MAX_ITEM_NAME
                || i.qty == 0
                || i.qty > MAX_QTY
            {
                return Err(DecodeError::InvalidValue { field: "cart item" });
            }
            if i.sku.chars().chain(i.name.chars()).any(char::is_control) {
                return Err(DecodeError::InvalidValue { field: "cart item" });
            }
        }
        self.total().ok_or(DecodeError::InvalidValue {
            field: "cart total",
        })
    }
}

impl Codec for Cart {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_nested(out, 0xE7, |o| {
            tlv::write(o, 0x81, self.currency.as_bytes());
            for i in &self.items {
                tlv::write_nested(o, 0xA0, |o| {
                    tlv::write(o, 0x80, i.sku.as_bytes());
                    tlv::write(o, 0x81, i.name.as_bytes());
                    tlv::write(o, 0x82, &i.qty.to_be_bytes());
                    tlv::write(o, 0x83, &i.unit_price.to_be_bytes());
                });
            }
        });
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tlv::parse_expect(input, 0xE7)?);
        let currency = Currency::from_bytes(r.expect(0x81)?)?;
        let mut items = Vec::new();
        for raw in r.repeated(0xA0, MAX_CART_ITEMS)? {
            let mut ir = Reader::new(raw);
            let item = CartItem {
                sku: text("sku", ir.expect(0x80)?, MAX_SKU)?,
                name: text("item name", ir.expect(0x81)?, MAX_ITEM_NAME)?,
                qty: u32_be("qty", ir.expect(0x82)?)?,
                unit_price: u64_be("unit price", ir.expect(0x83)?)?,
            };
            ir.finish()?;
            items.push(item);
        }
        r.finish()?;
        let cart = Cart { currency, items };
        cart.validate()?;
        Ok(cart)
    }
}

/// Bit of each scenario in the wallet's capability byte.
pub const CAP_PAY: u8 = 0x01;
pub const CAP_ORDER: u8 = 0x02;
pub const CAP_PICKUP: u8 = 0x04;

/// What the terminal asks the phone to do; signed by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Pay `amount` to the merchant named in the terminal certificate.
    Pay { amount: Amount },
    /// Pay for an itemized cart: the tap binds the cart's hash and total; the
    /// items follow in the receipt.
    Order {
        amount: Amount,
        cart_hash: [u8; 32],
        items: u16,
    },
    /// Collect a parcel at `site` with a pickup credential.
    Pickup { site: String },
}

/// The three kinds of tap, as every layer names them (records, the
/// host's ledger, the terminal's API): `pay`, `order`, `pickup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ScenarioKind {
    Pay,
    Order,
    Pickup,
}

impl ScenarioKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::Pay => "pay",
            ScenarioKind::Order => "order",
            ScenarioKind::Pickup => "pickup",
        }
    }
}

impl core::fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Scenario {
    pub fn kind(&self) -> ScenarioKind {
        match self {
            Scenario::Pay { .. } => ScenarioKind::Pay,
            Scenario::Order { .. } => ScenarioKind::Order,
            Scenario::Pickup { .. } => ScenarioKind::Pickup,
        }
    }

    pub fn capability(&self) -> u8 {
        match self {
            Scenario::Pay { .. } => CAP_PAY,
            Scenario::Order { .. } => CAP_ORDER,
            Scenario::Pickup { .. } => CAP_PICKUP,
        }
    }

    pub fn amount(&self) -> Option<Amount> {
        match self {
            Scenario::Pay { amount } | Scenario::Order { amount, .. } => Some(*amount),
            Scenario::Pickup { .. } => None,
        }
    }

    /// Whether `cart` is exactly what this scenario signed: for an order the
    /// same hash, total, currency and item count; for anything else no cart.
    pub fn matches_cart(&self, cart: Option<&Cart>) -> bool {
        match self {
            Scenario::Order {
                amount,
                cart_hash,
                items,
            } => cart.is_some_and(|c| {
                c.hash() == *cart_hash
                    && c.total() == Some(amount.minor)
                    && c.currency == amount.currency
                    && c.items.len() == usize::from(*items)
            }),
            _ => cart.is_none(),
        }
    }

    /// The order scenario for a cart.
    pub fn order(cart: &Cart) -> Result<Self, DecodeError> {
        let minor = cart.validate()?;
        Ok(Scenario::Order {
            amount: Amount {
                minor,
                currency: cart.currency,
            },
            cart_hash: cart.hash(),
            items: u16::try_from(cart.items.len()).unwrap_or(u16::MAX),
        })
    }
}

impl Codec for Scenario {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Scenario::Pay { amount } => tlv::write_nested(out, 0xA1, |o| {
                tlv::write(o, 0x80, &crate::codec::uint_bytes(amount.minor));
                tlv::write(o, 0x81, amount.currency.as_bytes());
            }),
            Scenario::Order {
                amount,
                cart_hash,
                items,
            } => tlv::write_nested(out, 0xA2, |o| {
                tlv::write(o, 0x80, &crate::codec::uint_bytes(amount.minor));
                tlv::write(o, 0x81, amount.currency.as_bytes());
                tlv::write(o, 0x82, cart_hash);
                tlv::write(o, 0x83, &items.to_be_bytes());
            }),
            Scenario::Pickup { site } => {
                tlv::write_nested(out, 0xA3, |o| tlv::write(o, 0x84, site.as_bytes()))
            }
        }
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let t = tlv::parse_exact(input)?;
        let mut r = Reader::new(t.value);
        let amount = |r: &mut Reader<'_>| -> Result<Amount, DecodeError> {
            let minor = crate::codec::uint("amount", r.expect(0x80)?)?;
            let currency = Currency::from_bytes(r.expect(0x81)?)?;
            Ok(Amount { minor, currency })
        };
        let s = match t.tag {
            0xA1 => Scenario::Pay {
                amount: amount(&mut r)?,
            },
            0xA2 => {
                let amount = amount(&mut r)?;
                let cart_hash = fixed::<32>("cart hash", r.expect(0x82)?)?;
                let items = u16_be("item count", r.expect(0x83)?)?;
                if items == 0 || usize::from(items) > MAX_CART_ITEMS {
                    return Err(DecodeError::InvalidValue {
                        field: "item count",
                    });
                }
                Scenario::Order {
                    amount,
                    cart_hash,
                    items,
                }
            }
            0xA3 => {
                let site = text("site", r.expect(0x84)?, MAX_SITE)?;
                if site.is_empty() {
                    return Err(DecodeError::InvalidValue { field: "site" });
                }
                Scenario::Pickup { site }
            }
            got => {
                return Err(DecodeError::UnexpectedTag {
                    expected: 0xA1,
                    got,
                })
            }
        };
        r.finish()?;
        Ok(s)
    }
}

/// Longest name of a low-value class in a pickup credential.
pub const MAX_PRESENCE_CLASS: usize = 32;

/// An operator-signed pickup credential: "the holder of `recipient` may
/// collect `parcel` from `slot` at `site` until `not_after`".
///
/// User presence: by default the wallet releases the credential only after
/// its user confirmed on the phone (or armed it with a biometric). The
/// operator may relax that for a named low-value class (`low_value_class`,
/// e.g. `"letter"`), signed here like every other field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupCredential {
    pub id: [u8; 16],
    pub parcel: String,
    pub site: String,
    pub slot: u16,
    /// Compressed SEC1 public key of the recipient wallet (its certificate key).
    pub recipient: [u8; POINT_LEN],
    pub not_after: u64,
    /// SHA-256 of the operator certificate that signed this credential.
    pub operator: [u8; 32],
    /// `None` (the default): user presence required to release it;
    /// `Some(class)`: the operator relaxed presence for this low-value class.
    pub low_value_class: Option<String>,
    pub signature: [u8; SIG_LEN],
}

/// Domain separation label of credential signatures.
pub const LABEL_CREDENTIAL: &[u8] = b"tapstack/v2 pickup credential";

impl PickupCredential {
    /// Whether releasing this credential needs the user's presence on the
    /// phone (confirmation or biometric arming).
    pub fn requires_presence(&self) -> bool {
        self.low_value_class.is_none()
    }

    fn encode_body(&self, o: &mut Vec<u8>) {
        tlv::write(o, 0x81, &self.id);
        tlv::write(o, 0x82, self.parcel.as_bytes());
        tlv::write(o, 0x83, self.site.as_bytes());
        tlv::write(o, 0x84, &self.slot.to_be_bytes());
        tlv::write(o, 0x85, &self.recipient);
        tlv::write(o, 0x86, &self.not_after.to_be_bytes());
        tlv::write(o, 0x87, &self.operator);
        if let Some(class) = &self.low_value_class {
            tlv::write(o, 0x88, class.as_bytes());
        }
    }

    /// The bytes the operator signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = LABEL_CREDENTIAL.to_vec();
        self.encode_body(&mut out);
        out
    }

    /// Fill in `operator` and `signature` with the operator's key.
    pub fn sign(&mut self, operator: &crate::pki::Certificate, key: &p256::ecdsa::SigningKey) {
        self.operator = *operator.hash();
        self.signature = crate::crypto::sign(key, &self.signed_bytes());
    }
}

impl Codec for PickupCredential {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_nested(out, 0xE4, |o| {
            self.encode_body(o);
            tlv::write(o, 0x89, &self.signature);
        });
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tlv::parse_expect(input, 0xE4)?);
        let c = PickupCredential {
            id: fixed("credential id", r.expect(0x81)?)?,
            parcel: nonempty("parcel", text("parcel", r.expect(0x82)?, MAX_PARCEL)?)?,
            site: nonempty("site", text("site", r.expect(0x83)?, MAX_SITE)?)?,
            slot: u16_be("slot", r.expect(0x84)?)?,
            recipient: fixed("recipient", r.expect(0x85)?)?,
            not_after: u64_be("not after", r.expect(0x86)?)?,
            operator: fixed("operator", r.expect(0x87)?)?,
            low_value_class: r
                .optional(0x88)?
                .map(|v| {
                    text("low-value class", v, MAX_PRESENCE_CLASS)
                        .and_then(|s| nonempty("low-value class", s))
                })
                .transpose()?,
            signature: fixed("signature", r.expect(0x89)?)?,
        };
        r.finish()?;
        Ok(c)
    }
}

fn nonempty(field: &'static str, s: String) -> Result<String, DecodeError> {
    if s.is_empty() {
        return Err(DecodeError::InvalidValue { field });
    }
    Ok(s)
}

/// Length of [`Receipt::record_check`].
pub const RECORD_CHECK_LEN: usize = 4;

/// [`Receipt::record_check`] of the record with this hash.
pub fn record_check(record_hash: &[u8; 32]) -> [u8; RECORD_CHECK_LEN] {
    crate::codec::prefix(record_hash)
}

/// What the terminal tells the phone once the record is durably queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The first bytes of the queued record's hash: with the terminal and
    /// `seq` (which name the record) a check value the phone can show and
    /// the host can match, kept short so a receipt fits one cipher block.
    pub record_check: [u8; RECORD_CHECK_LEN],
    /// The terminal's sequence number of the record.
    pub seq: u64,
    /// Order number to show the customer (`order`).
    pub order_number: Option<String>,
    /// The items (`order`); must hash to the scenario's cart hash.
    pub cart: Option<Cart>,
    /// The slot that opened (`pickup`).
    pub slot: Option<u16>,
}

impl Codec for Receipt {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_nested(out, 0xE3, |o| {
            tlv::write(o, 0x80, &self.record_check);
            tlv::write(o, 0x81, &crate::codec::uint_bytes(self.seq));
            if let Some(n) = &self.order_number {
                tlv::write(o, 0x82, n.as_bytes());
            }
            if let Some(c) = &self.cart {
                c.encode(o);
            }
            if let Some(s) = self.slot {
                tlv::write(o, 0x84, &s.to_be_bytes());
            }
        });
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tlv::parse_expect(input, 0xE3)?);
        let record_check = fixed("record check", r.expect(0x80)?)?;
        let seq = crate::codec::uint("seq", r.expect(0x81)?)?;
        let order_number = r
            .optional(0x82)?
            .map(|v| text("order number", v, MAX_ORDER_NUMBER))
            .transpose()?;
        let cart = match r.optional(0xE7)? {
            Some(v) => {
                let mut enc = Vec::with_capacity(v.len() + 4);
                tlv::write(&mut enc, 0xE7, v);
                Some(Cart::decode(&enc)?)
            }
            None => None,
        };
        let slot = r.optional(0x84)?.map(|v| u16_be("slot", v)).transpose()?;
        r.finish()?;
        Ok(Receipt {
            record_check,
            seq,
            order_number,
            cart,
            slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "serde")]
    #[test]
    fn money_in_json_is_one_type_both_ways() {
        use serde_json::json;
        let cny = Currency::new("CNY").unwrap();
        let a = Amount::parse("12.50", cny).unwrap();
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            json!({"minor": 1250, "currency": "CNY"})
        );
        assert_eq!(
            serde_json::from_value::<Amount>(json!({"minor": 1250, "currency": "CNY"})).unwrap(),
            a
        );
        // Only active ISO 4217 codes come in.
        for bad in ["XYZ", "cny", "CNYY", "XTS"] {
            assert!(
                serde_json::from_value::<Currency>(json!(bad)).is_err(),
                "{bad}"
            );
        }
        // The API's pair of fields.
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct View {
            seq: u64,
            #[serde(flatten, with = "amount_fields")]
            amount: Option<Amount>,
        }
        let paid = View {
            seq: 1,
            amount: Some(a),
        };
        let v = serde_json::to_value(&paid).unwrap();
        assert_eq!(v, json!({"seq": 1, "amount": 1250, "currency": "CNY"}));
        assert_eq!(serde_json::from_value::<View>(v).unwrap(), paid);
        let pickup = View {
            seq: 2,
            amount: None,
        };
        let v = serde_json::to_value(&pickup).unwrap();
        assert_eq!(v, json!({"seq": 2, "amount": null, "currency": null}));
        assert_eq!(serde_json::from_value::<View>(v).unwrap(), pickup);
        assert!(serde_json::from_value::<View>(json!({"seq": 3, "amount": 5})).is_err());
    }

    fn cny() -> Currency {
        Currency::new("CNY").unwrap()
    }

    #[test]
    fn amounts_parse_without_floats() {
        assert_eq!(Amount::parse("12.50", cny()).unwrap().minor, 1250);
        assert_eq!(Amount::parse("12.5", cny()).unwrap().minor, 1250);
        assert_eq!(Amount::parse("12", cny()).unwrap().minor, 1200);
        assert_eq!(Amount::parse("0.01", cny()).unwrap().minor, 1);
        assert_eq!(
            Amount::parse("500", Currency::new("JPY").unwrap())
                .unwrap()
                .minor,
            500
        );
        for bad in [
            "",
            "12.",
            ".5",
            "1.234",
            "-1",
            "1e3",
            "12,50",
            "999999999999999999",
            " 1",
        ] {
            assert!(Amount::parse(bad, cny()).is_none(), "{bad}");
        }
        assert!(Amount::parse("1.5", Currency::new("JPY").unwrap()).is_none());
        assert_eq!(
            Amount {
                minor: 1250,
                currency: cny()
            }
            .to_string(),
            "12.50 CNY"
        );
        assert_eq!(
            Amount {
                minor: 7,
                currency: cny()
            }
            .to_string(),
            "0.07 CNY"
        );
        assert!(Currency::new("cny").is_none() && Currency::new("CN").is_none());
    }

    #[test]
    fn only_active_iso_4217_codes_are_currencies() {
        assert_eq!(
            Currency::parse("XYZ"),
            Err(CurrencyError::Unknown("XYZ".into()))
        );
        assert_eq!(
            Currency::parse("XYZ").unwrap_err().to_string(),
            "XYZ is not an active ISO 4217 currency code"
        );
        for bad in ["cny", "CN", "CNYY", "", "C1Y", "ÄBC"] {
            assert_eq!(
                Currency::parse(bad),
                Err(CurrencyError::Malformed(bad.into())),
                "{bad}"
            );
        }
        assert!(Currency::parse("XXX").is_err() && Currency::parse("XAU").is_err());
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        assert_eq!(Currency::parse("BIF").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("CLF").unwrap().exponent(), 4);
        assert_eq!(
            Amount::parse("1.2345", Currency::parse("CLF").unwrap())
                .unwrap()
                .to_string(),
            "1.2345 CLF"
        );
        // On the wire too: a scenario in XYZ does not decode.
        assert!(Currency::from_bytes(b"XYZ").is_err());
        assert_eq!(Currency::from_bytes(b"CNY"), Ok(cny()));
    }

    fn cart() -> Cart {
        Cart {
            currency: cny(),
            items: vec![
                CartItem {
                    sku: "TEA-01".into(),
                    name: "Jasmine tea".into(),
                    qty: 2,
                    unit_price: 800,
                },
                CartItem {
                    sku: "BUN-07".into(),
                    name: "Pork bun".into(),
                    qty: 3,
                    unit_price: 450,
                },
            ],
        }
    }

    #[test]
    fn cart_total_hash_roundtrip() {
        let c = cart();
        assert_eq!(c.total(), Some(2950));
        let bytes = c.to_bytes();
        assert_eq!(Cart::decode(&bytes).unwrap(), c);
        let mut other = c.clone();
        other.items[0].qty = 3;
        assert_ne!(other.hash(), c.hash());
        let overflow = Cart {
            currency: cny(),
            items: vec![CartItem {
                sku: "X".into(),
                name: String::new(),
                qty: 2,
                unit_price: u64::MAX,
            }],
        };
        assert!(overflow.total().is_none());
        assert!(Cart::decode(&overflow.to_bytes()).is_err());
        let empty = Cart {
            currency: cny(),
            items: vec![],
        };
        assert!(Cart::decode(&empty.to_bytes()).is_err());
    }

    #[test]
    fn cart_must_match_every_signed_field() {
        let order = Scenario::order(&cart()).unwrap();
        assert!(order.matches_cart(Some(&cart())));
        assert!(!order.matches_cart(None));
        let mut other_currency = cart();
        other_currency.currency = Currency::new("USD").unwrap();
        assert!(!order.matches_cart(Some(&other_currency)));
        let mut more = cart();
        more.items.push(CartItem {
            sku: "X".into(),
            name: "free".into(),
            qty: 1,
            unit_price: 0,
        });
        assert!(
            !order.matches_cart(Some(&more)),
            "same total, different items"
        );
        let pay = Scenario::Pay {
            amount: Amount {
                minor: 2950,
                currency: cny(),
            },
        };
        assert!(pay.matches_cart(None));
        assert!(!pay.matches_cart(Some(&cart())));
    }

    #[test]
    fn scenarios_roundtrip_and_reject() {
        let pay = Scenario::Pay {
            amount: Amount {
                minor: 1250,
                currency: cny(),
            },
        };
        let order = Scenario::order(&cart()).unwrap();
        let pickup = Scenario::Pickup {
            site: "LOCKER-7".into(),
        };
        for s in [pay, order, pickup] {
            let b = s.to_bytes();
            assert_eq!(Scenario::decode(&b).unwrap(), s);
            for cut in 0..b.len() {
                assert!(Scenario::decode(&b[..cut]).is_err());
            }
            let mut long = b.clone();
            long.push(0);
            assert!(Scenario::decode(&long).is_err());
        }
        assert!(Scenario::decode(&[0xA3, 0x02, 0x84, 0x00]).is_err());
        assert!(Scenario::decode(&[0xA4, 0x00]).is_err());
    }
}
