// Generates NOWPayments IPN signature test vectors with Node.js itself.
// Regenerate with: node tests/data/nowpayments/generate_vectors.js
// (run from the repository root; writes tests/data/nowpayments/vectors.json)
//
// The signing code below is the algorithm NOWPayments documents for verifying
// IPNs, so the vectors record what the provider computes, not what we think it
// should compute. Bodies are raw strings as a provider would send them.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

function sortObject(obj) {
  return Object.keys(obj).sort().reduce((result, key) => {
    result[key] = (obj[key] && typeof obj[key] === 'object') ? sortObject(obj[key]) : obj[key];
    return result;
  }, {});
}

function canonical(rawBody) {
  return JSON.stringify(sortObject(JSON.parse(rawBody)));
}

function sign(secret, rawBody) {
  const hmac = crypto.createHmac('sha512', secret);
  hmac.update(canonical(rawBody));
  return hmac.digest('hex');
}

const SECRET = 'nowpayments-test-ipn-secret-9f2c1d';

// String.raw keeps JSON escapes such as \ud800 as the six characters a provider
// would put on the wire instead of letting JavaScript interpret them.
const cases = [
  {
    name: 'full_ipn_finished',
    body: `{
  "payment_id": 5077125051,
  "parent_payment_id": null,
  "invoice_id": 4875302561,
  "payment_status": "finished",
  "pay_address": "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
  "payin_extra_id": null,
  "price_amount": 170,
  "price_currency": "usd",
  "pay_amount": 0.00412,
  "actually_paid": 0.00412,
  "actually_paid_at_fiat": 0,
  "pay_currency": "btc",
  "order_id": "BL-ORD-2024-000123",
  "order_description": "Steam key: Elden Ring (GLOBAL)",
  "purchase_id": "5837122679",
  "created_at": "2024-05-14T10:21:33.512Z",
  "updated_at": "2024-05-14T10:48:02.097Z",
  "outcome_amount": 0.0040588,
  "outcome_currency": "btc",
  "payment_extra_ids": null,
  "fee": {"withdrawalFee": 0, "serviceFee": 0.0000206, "depositFee": 0.0000124, "currency": "btc"}
}`,
  },
  {
    name: 'partially_paid',
    body: '{"payment_status":"partially_paid","payment_id":5077125052,"order_id":"BL-ORD-2024-000124",' +
      '"price_amount":59.99,"price_currency":"eur","pay_amount":21.347,"actually_paid":10.5,' +
      '"actually_paid_at_fiat":29.5,"pay_currency":"usdttrc20","pay_address":"TXYZabc123",' +
      '"invoice_id":null,"outcome_amount":10.42,"outcome_currency":"usdttrc20",' +
      '"fee":{"serviceFee":0.05,"currency":"usdttrc20","withdrawalFee":0.03,"depositFee":0}}',
  },
  {
    name: 'number_formats',
    body: `{ "tiny": 1e-7, "tiny_upper": 1E-7, "float_int": 170.0, "int": 170, "tenth": 0.1,
      "big_exp": 1e21, "big_int": 12345678901234567890, "bigger_int": 123456789012345678901,
      "neg_zero": -0, "neg_zero_float": -0.0, "min_subnormal": 5e-324,
      "max_double": 1.7976931348623157e308, "micro": 0.000001, "below_micro": 0.0000001234,
      "overflow": 1e400, "neg_overflow": -1e400, "underflow": 1e-400, "e_plus": 1E+2,
      "just_below_1e21": 999999999999999900000, "negative": -42.5, "amount": 0.00412,
      "precise": 0.30000000000000004, "exp_frac": 1.5e300, "neg_exp": -2.5e-10 }`,
  },
  {
    name: 'non_ascii_text',
    body: String.raw`{"order_description":"Café crème – 中文说明 🎮","escaped_pair":"\ud83c\udfae",` +
      String.raw`"lone_high":"x\ud800y","lone_low":"\udc00","escaped_e":"caf\u00e9","ascii":"plain"}`,
  },
  {
    name: 'control_chars_and_separators',
    body: String.raw`{"controls":"nul\u0000 us\u001f bs\b ff\f nl\n cr\r tab\t",` +
      String.raw`"quotes":"she said \"hi\" \\ back\/slash","separators":"ls\u2028 ps\u2029",` +
      String.raw`"del_escaped":"\u007f","del_raw":"` + '\x7f' + String.raw`","upper_hex":"\u00E9\u001F"}`,
  },
  {
    name: 'integer_like_keys',
    body: '{"b":1,"10":2,"9":3,"a":4,"01":5,"0":6,"4294967294":7,"4294967295":8,"-1":9,"1.5":10,' +
      '"nested":{"z":true,"2":"two","1":"one","A":"upper"}}',
  },
  {
    name: 'utf16_key_order',
    body: '{"\uffff":1,"🎮":2,"é":3,"Z":4,"a":5,"_":6,"aa":7,"":8,"中":9,"ab":10}',
  },
  {
    name: 'arrays_and_empties',
    body: '{"list":[3,1,2],"nested":[[1,[2,[]]],{"b":1,"a":[]}],"empty_list":[],"empty_obj":{},' +
      '"list_of_empties":[[],{}, null],"long_list":[0,1,2,3,4,5,6,7,8,9,10,11]}',
  },
  {
    name: 'nulls_and_booleans',
    body: '{ "t" : true , "f" : false , "n" : null , "zero" : 0 , "empty" : "" , ' +
      '"nested" : { "n" : null , "list" : [ true , false , null ] } }',
  },
  {
    name: 'deep_nesting',
    body: '{"l1":{"z":1,"l2":{"y":[{"l4":{"x":{"l6":{"b":2,"a":[1,{"k":"v"}]}}}}],"a":null}},"a":0}',
  },
  {
    name: 'proto_key_dropped',
    body: '{"__proto__":{"polluted":true},"a":1,"inner":{"__proto__":"str","b":2},' +
      '"constructor":"c","toString":"t"}',
  },
  {
    name: 'duplicate_keys_last_wins',
    body: '{"payment_status":"waiting","price_amount":1,"payment_status":"finished"}',
  },
  {
    name: 'whitespace_everywhere',
    body: ' \r\n\t{ \n "b" :\t[ 1 ,\r\n 2 ] ,\n\n "a" : { } \t}\r\n ',
  },
  {
    name: 'non_ascii_secret',
    secret: 'sécret-中文-🔑',
    body: '{"payment_id":1,"payment_status":"confirmed","price_amount":10.5}',
  },
];

const vectors = cases.map(({ name, body, secret = SECRET }) => ({
  name,
  secret,
  body,
  canonical: canonical(body),
  signature: sign(secret, body),
}));

const out = path.join(__dirname, 'vectors.json');
fs.writeFileSync(out, JSON.stringify(vectors, null, 2) + '\n', 'utf8');
console.log(`wrote ${vectors.length} vectors to ${out}`);
