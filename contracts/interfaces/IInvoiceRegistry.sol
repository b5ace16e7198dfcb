// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IBillingBase} from "./IBillingBase.sol";

/// @title IInvoiceRegistry
/// @notice Events, errors and types of chainbill's invoices. An invoice's status is always
/// derivable from these events alone.
interface IInvoiceRegistry is IBillingBase {
    /// @notice An invoice as the views return it.
    struct Invoice {
        /// @notice Merchant that issued the invoice and receives its payments.
        address merchant;
        /// @notice Customer billed (zero for a payment link anyone may pay).
        address customer;
        /// @notice ERC-20 token of the invoice, or `NATIVE_TOKEN` for ETH.
        address token;
        /// @notice Amount invoiced, in token base units (wei for ETH).
        uint256 amount;
        /// @notice Amount paid so far, net of refunds, in token base units: on-chain payments
        /// plus off-chain settlements minus refunds.
        uint256 paid;
        /// @notice Due date, in unix seconds.
        uint256 dueDate;
        /// @notice Whether installments (partial payments) are accepted.
        bool allowPartial;
        /// @notice Whether the merchant voided the invoice.
        bool voided;
    }

    /// @notice Status of an invoice (overdue is a separate view of the due date).
    enum InvoiceStatus {
        None,
        Open,
        PartiallyPaid,
        Paid,
        Void
    }

    /// @notice A merchant (or its operator) issued an invoice.
    /// @param invoiceId `keccak256(abi.encode(merchant, referenceHash))`.
    /// @param merchant The merchant, who receives the payments.
    /// @param customer The customer billed (zero for anyone).
    /// @param referenceHash Merchant-unique reference: the hash of the business invoice number.
    /// @param token ERC-20 token, or `NATIVE_TOKEN` for ETH.
    /// @param amount Amount invoiced, in token base units.
    /// @param dueDate Due date, in unix seconds.
    /// @param allowPartial Whether partial payments are accepted.
    /// @param contentHash Hash of the off-chain content (line items, taxes, notes).
    event InvoiceIssued(
        bytes32 indexed invoiceId,
        address indexed merchant,
        address indexed customer,
        bytes32 referenceHash,
        address token,
        uint256 amount,
        uint256 dueDate,
        bool allowPartial,
        bytes32 contentHash
    );

    /// @notice A payment was made on an invoice, on-chain.
    /// @param invoiceId The invoice.
    /// @param payer The wallet the funds came from (the customer or someone paying for it).
    /// @param amount Amount paid, in token base units.
    /// @param fee Part of `amount` paid to the platform fee recipient, in token base units.
    event InvoicePaid(bytes32 indexed invoiceId, address indexed payer, uint256 amount, uint256 fee);

    /// @notice A payment made off-chain (card, bank) was recorded against an invoice.
    /// @param invoiceId The invoice.
    /// @param settler The merchant or the settler it approved.
    /// @param amount Amount settled, in token base units.
    /// @param fiatReference The payment provider's reference (hashed); usable once per merchant.
    event InvoiceSettledOffchain(
        bytes32 indexed invoiceId, address indexed settler, uint256 amount, bytes32 fiatReference
    );

    /// @notice The merchant refunded part or all of what was paid.
    /// @param invoiceId The invoice.
    /// @param recipient Who received the refund.
    /// @param amount Amount refunded, in token base units.
    event InvoiceRefunded(bytes32 indexed invoiceId, address indexed recipient, uint256 amount);

    /// @notice The merchant voided an unpaid invoice; it can no longer be paid.
    /// @param invoiceId The invoice.
    /// @param voidedBy The merchant or its operator.
    event InvoiceVoided(bytes32 indexed invoiceId, address indexed voidedBy);

    /// @notice A merchant approved or revoked a settler, who may record off-chain payments.
    /// @param merchant The merchant.
    /// @param settler The settler (for instance a fiat bridge's wallet).
    /// @param approved True when granted, false when revoked.
    event SettlerSet(address indexed merchant, address indexed settler, bool approved);

    /// @notice An invoice with this merchant and reference exists already (references are
    /// never reusable, not even after a void).
    /// @param invoiceId The id the merchant and reference map to.
    error InvoiceAlreadyIssued(bytes32 invoiceId);

    /// @notice No invoice has this id.
    /// @param invoiceId The id asked for.
    error InvoiceNotFound(bytes32 invoiceId);

    /// @notice The invoice was voided.
    /// @param invoiceId The invoice.
    error InvoiceIsVoid(bytes32 invoiceId);

    /// @notice Nothing is left to pay.
    /// @param invoiceId The invoice.
    error InvoiceAlreadyPaid(bytes32 invoiceId);

    /// @notice The payment is larger than what is left to pay.
    /// @param invoiceId The invoice.
    /// @param amount The payment, in token base units.
    /// @param due What is left to pay, in token base units.
    error AmountExceedsDue(bytes32 invoiceId, uint256 amount, uint256 due);

    /// @notice The invoice takes no installments: pay exactly what is due.
    /// @param invoiceId The invoice.
    /// @param amount The payment, in token base units.
    /// @param due What is left to pay, in token base units.
    error PartialPaymentNotAllowed(bytes32 invoiceId, uint256 amount, uint256 due);

    /// @notice An amount is zero or larger than the contract stores.
    /// @param amount The amount given, in token base units.
    /// @param max The largest amount accepted, in token base units.
    error InvalidAmount(uint256 amount, uint256 max);

    /// @notice The due date lies in the past.
    /// @param dueDate The due date given, in unix seconds.
    /// @param now_ The current block time, in unix seconds.
    error DueDateInPast(uint256 dueDate, uint256 now_);

    /// @notice The due date does not fit the stored width (40 bits of unix seconds).
    /// @param dueDate The due date given, in unix seconds.
    /// @param max The latest due date accepted, in unix seconds.
    error DueDateTooFar(uint256 dueDate, uint256 max);

    /// @notice Paid in the wrong asset: ETH for a token invoice, or a token for an ETH invoice.
    /// @param invoiceId The invoice.
    /// @param token The invoice's token (`NATIVE_TOKEN` for ETH).
    error WrongPaymentAsset(bytes32 invoiceId, address token);

    /// @notice The ETH sent does not match the amount.
    /// @param expected The amount, in wei.
    /// @param sent `msg.value`, in wei.
    error EthAmountMismatch(uint256 expected, uint256 sent);

    /// @notice Sending ETH to a recipient failed.
    /// @param recipient The recipient.
    /// @param amount The amount, in wei.
    error EthTransferFailed(address recipient, uint256 amount);

    /// @notice Only unpaid invoices can be voided.
    /// @param invoiceId The invoice.
    /// @param paid What was paid so far, in token base units.
    error InvoiceNotVoidable(bytes32 invoiceId, uint256 paid);

    /// @notice Only the invoice's merchant may do this.
    /// @param invoiceId The invoice.
    /// @param caller The caller.
    error NotInvoiceMerchant(bytes32 invoiceId, address caller);

    /// @notice The refund is larger than what was paid.
    /// @param invoiceId The invoice.
    /// @param amount The refund, in token base units.
    /// @param paid What was paid, net of earlier refunds, in token base units.
    error RefundExceedsPaid(bytes32 invoiceId, uint256 amount, uint256 paid);

    /// @notice The caller is neither the merchant nor a settler it approved.
    /// @param merchant The merchant.
    /// @param caller The caller.
    error NotSettler(address merchant, address caller);

    /// @notice The fiat reference was already used by this merchant.
    /// @param merchant The merchant.
    /// @param fiatReference The reference.
    error FiatReferenceAlreadyUsed(address merchant, bytes32 fiatReference);

    /// @notice A refund must go to someone.
    error InvalidRecipient();
}
