// Pays the invoice on this page from the browser's wallet (EIP-1193 `window.ethereum`):
// the server prepares the transactions (approve + pay, permit + payWithPermit, pay, or
// payEth); the wallet signs and sends them in order; then the page waits for the indexer
// to record the payment and reloads.
"use strict";

(function () {
  const configElement = document.getElementById("pay-config");
  if (!configElement) return;
  const config = JSON.parse(configElement.textContent);
  const messages = config.messages;
  const button = document.getElementById("pay-button");
  const statusLine = document.getElementById("pay-status");
  const amountInput = document.getElementById("pay-amount");
  const POLL_MS = 1500;

  function show(state, text) {
    if (!statusLine) return;
    statusLine.dataset.state = state;
    statusLine.textContent = text;
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (match, key) => (key in values ? String(values[key]) : match));
  }

  // A decimal typed by a person ("12.5") to base units, exactly (no floating point).
  function toBaseUnits(text, decimals) {
    const value = String(text).trim();
    if (!/^\d+(\.\d+)?$/.test(value)) return null;
    const [whole, fraction = ""] = value.split(".");
    if (fraction.length > decimals) return null;
    const digits = (whole + fraction.padEnd(decimals, "0")).replace(/^0+(?=\d)/, "");
    return digits;
  }

  // Base units as the page writes amounts (every significant digit, at least two fraction
  // digits, the locale's separators); Intl formats the decimal string exactly.
  function formatUnits(units, decimals) {
    const digits = units.padStart(decimals + 1, "0");
    const decimal = decimals ? digits.slice(0, -decimals) + "." + digits.slice(-decimals) : digits;
    const format = new Intl.NumberFormat(config.locale, {
      minimumFractionDigits: Math.min(2, decimals),
      maximumFractionDigits: decimals,
    });
    const text = format.format(decimal);
    return config.currency ? `${text} ${config.currency}` : text;
  }

  // The Pay button names the amount that will be paid: the typed one, while it is valid.
  if (amountInput && button) {
    const fullLabel = button.textContent;
    amountInput.addEventListener("input", () => {
      const amount = toBaseUnits(amountInput.value, config.decimals || 0);
      const valid = amount !== null && amount !== "0" && compareUnits(amount, config.due) <= 0;
      button.textContent = valid
        ? `${config.pay_label} ${formatUnits(amount, config.decimals || 0)}`
        : fullLabel;
    });
  }

  function compareUnits(a, b) {
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = payload && payload.error ? payload.error.message : response.statusText;
      throw new Error(message);
    }
    return payload;
  }

  async function status() {
    const response = await fetch(config.status_url, { cache: "no-store" });
    if (!response.ok) throw new Error(response.statusText);
    return response.json();
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function waitForReceipt(provider, hash) {
    for (;;) {
      const receipt = await provider.request({ method: "eth_getTransactionReceipt", params: [hash] });
      if (receipt) return receipt;
      await sleep(POLL_MS);
    }
  }

  // Reloads the page once the indexer shows a change (after a payment: a higher paid amount).
  async function reloadWhenIndexed(previousPaid, previousStatus, previousPending) {
    for (;;) {
      try {
        const now = await status();
        if (
          now.status !== previousStatus ||
          now.pending !== previousPending ||
          compareUnits(String(now.paid), String(previousPaid)) !== 0
        ) {
          window.location.reload();
          return;
        }
      } catch (error) {
        // The gateway is restarting or the network blinked: keep polling.
      }
      await sleep(POLL_MS);
    }
  }

  async function payInvoice() {
    const provider = window.ethereum;
    if (!provider || typeof provider.request !== "function") {
      show("error", messages.no_wallet);
      return;
    }
    let amount = null;
    if (amountInput) {
      amount = toBaseUnits(amountInput.value, config.decimals || 0);
      if (amount === null || amount === "0" || compareUnits(amount, config.due) > 0) {
        show("error", messages.invalid_amount);
        return;
      }
    }
    button.disabled = true;
    try {
      show("connecting", messages.connecting);
      const accounts = await provider.request({ method: "eth_requestAccounts" });
      const payer = accounts[0];
      const chainId = await provider.request({ method: "eth_chainId" });
      if (BigInt(chainId) !== BigInt(config.chain_id)) {
        try {
          await provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId: config.chain_id }] });
        } catch (error) {
          show("error", messages.wrong_chain);
          button.disabled = false;
          return;
        }
      }
      show("preparing", messages.preparing);
      const request = { payer };
      if (amount !== null) request.amount = amount;
      let prepared = await postJson(config.transactions_url, request);
      let transactions = prepared.transactions;
      if (prepared.permit) {
        // One transaction instead of two, when the wallet signs typed data; else approve + pay.
        try {
          show("signing", messages.signing);
          const signature = await provider.request({
            method: "eth_signTypedData_v4",
            params: [payer, JSON.stringify(prepared.permit.typed_data)],
          });
          const withPermit = await postJson(config.transactions_url, {
            ...request,
            permit: { signature, deadline: prepared.permit.deadline },
          });
          transactions = withPermit.transactions;
        } catch (error) {
          transactions = prepared.transactions;
        }
      }
      for (let index = 0; index < transactions.length; index++) {
        const values = { step: index + 1, count: transactions.length };
        show("sending", fill(messages.sending, values));
        const hash = await provider.request({ method: "eth_sendTransaction", params: [transactions[index]] });
        show("mining", fill(messages.mining, values));
        const receipt = await waitForReceipt(provider, hash);
        if (receipt.status !== "0x1" && receipt.status !== 1) throw new Error(messages.rejected);
      }
      show("indexing", messages.indexing);
      await reloadWhenIndexed(config.paid, config.status, config.pending);
    } catch (error) {
      show("error", fill(messages.failed, { reason: error && error.message ? error.message : String(error) }));
      button.disabled = false;
    }
  }

  if (button) {
    button.addEventListener("click", payInvoice);
  } else if (config.pending) {
    // Not issued yet: show the invoice as soon as the indexer has it.
    reloadWhenIndexed(config.paid, config.status, config.pending);
  }
})();
