// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {BillingBase} from "./base/BillingBase.sol";
import {IInvoiceRegistry} from "./interfaces/IInvoiceRegistry.sol";

/// @title InvoiceRegistry
/// @notice One-off invoices with on-chain status. The id of an invoice derives from its
/// merchant and a merchant-unique reference, so it is known before the transaction is mined
/// and a reference can never be issued twice. Invoices are paid in an ERC-20 or in ETH, by
/// the customer or on its behalf, in installments where allowed and never above what is due;
/// they can be voided while unpaid, refunded, and settled off-chain by an approved settler
/// with a fiat reference that works once.
/// @dev Multi-tenant; amounts in token base units (wei for ETH), times in unix seconds.
contract InvoiceRegistry is IInvoiceRegistry, BillingBase {
    /// @notice Token address that stands for native ETH.
    address public constant NATIVE_TOKEN = 0xEeeeeEeeeEeEeeEeEeEeeEEEeeeeEeeeeeeeEEeE;

    /// @notice Largest invoice amount, in token base units (2**96 - 1, about 7.9e28: 79 billion
    /// whole tokens of 18 decimals).
    uint256 public constant MAX_AMOUNT = type(uint96).max;

    /// @dev Three slots. A payment reads and writes only the first (token and what is still
    /// due); the merchant comes from the caller and is proven by the id derivation. The
    /// third slot is read only for partial payments.
    struct InvoiceRecord {
        address token;
        uint96 due;
        address merchant;
        uint96 amount;
        address customer;
        uint40 dueDate;
        bool allowPartial;
        bool voided;
    }

    mapping(bytes32 invoiceId => InvoiceRecord) private _invoices;
    mapping(address merchant => mapping(address settler => bool approved)) private _settlers;
    mapping(bytes32 merchantFiatReference => bool used) private _usedFiatReferences;

    /// @param initialOwner May pause and unpause in an emergency.
    /// @param feeRecipient Receives the platform fee.
    /// @param feeBps Platform fee in basis points of every on-chain payment (at most `MAX_FEE_BPS`).
    constructor(address initialOwner, address feeRecipient, uint256 feeBps)
        BillingBase(initialOwner, feeRecipient, feeBps)
    {}

    // ---------------------------------------------------------------- issue

    /// @notice Issues an invoice for `merchant` (the caller, or a merchant that approved the
    /// caller as operator).
    /// @param merchant The merchant that bills and is paid.
    /// @param referenceHash Merchant-unique reference (hash of the business invoice number).
    /// @param customer The customer billed, or zero for a payment link anyone may pay.
    /// @param token ERC-20 token, or `NATIVE_TOKEN` for ETH.
    /// @param amount Amount, in token base units (1 to `MAX_AMOUNT`).
    /// @param dueDate Due date, in unix seconds (not in the past, at most 2**40 - 1).
    /// @param allowPartial Whether installments are accepted.
    /// @param contentHash Hash of the off-chain content (line items, taxes, notes).
    /// @return invoiceId `invoiceIdOf(merchant, referenceHash)`.
    function issue(
        address merchant,
        bytes32 referenceHash,
        address customer,
        address token,
        uint256 amount,
        uint256 dueDate,
        bool allowPartial,
        bytes32 contentHash
    ) external whenNotPaused returns (bytes32 invoiceId) {
        _requireMerchantOrOperator(merchant);
        if (token == address(0) || (token != NATIVE_TOKEN && token.code.length == 0)) revert InvalidToken(token);
        if (amount == 0 || amount > MAX_AMOUNT) revert InvalidAmount(amount, MAX_AMOUNT);
        if (dueDate < block.timestamp) revert DueDateInPast(dueDate, block.timestamp);
        if (dueDate > type(uint40).max) revert DueDateTooFar(dueDate, type(uint40).max);

        invoiceId = invoiceIdOf(merchant, referenceHash);
        InvoiceRecord storage invoice = _invoices[invoiceId];
        if (invoice.merchant != address(0)) revert InvoiceAlreadyIssued(invoiceId);
        invoice.token = token;
        invoice.due = uint96(amount);
        invoice.merchant = merchant;
        invoice.amount = uint96(amount);
        invoice.customer = customer;
        invoice.dueDate = uint40(dueDate);
        invoice.allowPartial = allowPartial;
        emit InvoiceIssued(
            invoiceId, merchant, customer, referenceHash, token, amount, dueDate, allowPartial, contentHash
        );
    }

    // ------------------------------------------------------------------ pay
    //
    // The payment functions take the merchant and reference rather than the invoice id: the
    // id derived from them proves the merchant, so a payment touches a single storage slot.
    // They stay open during a pause, like cancels and refunds: they move a payer's own funds
    // straight to the merchant under terms already on-chain, and a pause must not stop a
    // customer from settling a debt (see README, "Emergency pause").

    /// @notice Pays `amount` of an ERC-20 invoice from the caller's allowance to this contract.
    /// The caller may be the customer or anyone paying on its behalf.
    /// @param merchant The invoice's merchant.
    /// @param referenceHash The invoice's reference.
    /// @param amount Amount, in token base units: what is due, or less where installments are allowed.
    function pay(address merchant, bytes32 referenceHash, uint256 amount) external nonReentrant {
        _payToken(merchant, referenceHash, amount);
    }

    /// @notice Like `pay`, with an EIP-2612 permit for the allowance in the same transaction.
    /// @param merchant The invoice's merchant.
    /// @param referenceHash The invoice's reference.
    /// @param amount Amount, in token base units (also the permit's value).
    /// @param deadline Permit deadline, in unix seconds.
    /// @param v Permit signature `v`.
    /// @param r Permit signature `r`.
    /// @param s Permit signature `s`.
    function payWithPermit(
        address merchant,
        bytes32 referenceHash,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        bytes32 invoiceId = invoiceIdOf(merchant, referenceHash);
        address token = _invoices[invoiceId].token;
        // Checked before the permit call, which cannot reach a token that is not a contract.
        if (token == address(0)) revert InvoiceNotFound(invoiceId);
        if (token == NATIVE_TOKEN) revert WrongPaymentAsset(invoiceId, token);
        // nonReentrant; the permit goes to the token the merchant chose, and _payToken reads the
        // invoice from storage only after it, so a re-entry leaves no stale state to act on.
        // slither-disable-next-line reentrancy-no-eth
        _tryPermit(IERC20(token), msg.sender, amount, deadline, v, r, s);
        _payToken(merchant, referenceHash, amount);
    }

    /// @notice Pays an ETH invoice with `msg.value`.
    /// @param merchant The invoice's merchant.
    /// @param referenceHash The invoice's reference.
    function payEth(address merchant, bytes32 referenceHash) external payable nonReentrant {
        bytes32 invoiceId = invoiceIdOf(merchant, referenceHash);
        InvoiceRecord storage invoice = _invoices[invoiceId];
        address token = invoice.token;
        if (token != NATIVE_TOKEN) {
            if (token == address(0)) revert InvoiceNotFound(invoiceId);
            revert WrongPaymentAsset(invoiceId, token);
        }
        uint256 amount = msg.value;
        _recordPayment(invoiceId, invoice, amount);
        uint256 fee = _feeOf(amount);
        if (fee != 0) _sendEth(_feeRecipientAddress(), fee);
        _sendEth(merchant, amount - fee);
        emit InvoicePaid(invoiceId, msg.sender, amount, fee);
    }

    // ---------------------------------------------------- void, refund, settle

    /// @notice Voids an unpaid invoice. Open to the merchant and its operators, even when paused.
    /// @param invoiceId The invoice.
    function voidInvoice(bytes32 invoiceId) external {
        InvoiceRecord storage invoice = _existing(invoiceId);
        _requireMerchantOrOperator(invoice.merchant);
        if (invoice.voided) revert InvoiceIsVoid(invoiceId);
        uint256 paid = invoice.amount - invoice.due;
        if (paid != 0) revert InvoiceNotVoidable(invoiceId, paid);
        invoice.voided = true;
        // Nothing is due on a void invoice, which is what the payment path checks.
        invoice.due = 0;
        emit InvoiceVoided(invoiceId, msg.sender);
    }

    /// @notice Refunds part or all of what was paid, from the merchant's own funds (an
    /// allowance to this contract, or `msg.value` for ETH). Never blocked by a pause.
    /// @param invoiceId The invoice (caller must be its merchant).
    /// @param recipient Who receives the refund (usually the payer).
    /// @param amount Amount, in token base units, at most what was paid net of earlier refunds.
    function refund(bytes32 invoiceId, address recipient, uint256 amount) external payable nonReentrant {
        InvoiceRecord storage invoice = _existing(invoiceId);
        address merchant = invoice.merchant;
        if (msg.sender != merchant) revert NotInvoiceMerchant(invoiceId, msg.sender);
        if (recipient == address(0)) revert InvalidRecipient();
        if (invoice.voided) revert InvoiceIsVoid(invoiceId);
        uint256 due = invoice.due;
        uint256 paid = invoice.amount - due;
        if (amount == 0 || amount > paid) revert RefundExceedsPaid(invoiceId, amount, paid);
        // amount <= paid = total - due, so due + amount <= total, which fits in uint96.
        unchecked {
            invoice.due = uint96(due + amount);
        }
        address token = invoice.token;
        if (token == NATIVE_TOKEN) {
            if (msg.value != amount) revert EthAmountMismatch(amount, msg.value);
            _sendEth(recipient, amount);
        } else {
            if (msg.value != 0) revert WrongPaymentAsset(invoiceId, token);
            _collect(IERC20(token), merchant, recipient, amount, 0);
        }
        emit InvoiceRefunded(invoiceId, recipient, amount);
    }

    /// @notice Records a payment made off-chain (card, bank transfer). Open to the merchant
    /// and the settlers it approved; each fiat reference works once per merchant.
    /// @param invoiceId The invoice.
    /// @param amount Amount settled, in token base units.
    /// @param fiatReference The payment provider's reference (hashed).
    function settleOffchain(bytes32 invoiceId, uint256 amount, bytes32 fiatReference) external whenNotPaused {
        InvoiceRecord storage invoice = _existing(invoiceId);
        address merchant = invoice.merchant;
        if (msg.sender != merchant && !_settlers[merchant][msg.sender]) revert NotSettler(merchant, msg.sender);
        bytes32 key = keccak256(abi.encode(merchant, fiatReference));
        if (_usedFiatReferences[key]) revert FiatReferenceAlreadyUsed(merchant, fiatReference);
        _usedFiatReferences[key] = true;
        _recordPayment(invoiceId, invoice, amount);
        emit InvoiceSettledOffchain(invoiceId, msg.sender, amount, fiatReference);
    }

    /// @notice Approves or revokes a settler for the calling merchant.
    /// @param settler The settler's address.
    /// @param approved True to approve, false to revoke.
    function setSettler(address settler, bool approved) external {
        _settlers[msg.sender][settler] = approved;
        emit SettlerSet(msg.sender, settler, approved);
    }

    // ----------------------------------------------------------------- views

    /// @notice The id an invoice of `merchant` with `reference` has (or will have).
    /// @param merchant The merchant.
    /// @param referenceHash The merchant-unique reference.
    /// @return `keccak256(abi.encode(merchant, referenceHash))`.
    function invoiceIdOf(address merchant, bytes32 referenceHash) public pure returns (bytes32) {
        return keccak256(abi.encode(merchant, referenceHash));
    }

    /// @notice An invoice.
    /// @param invoiceId The invoice.
    /// @return invoice All its fields (zero if it does not exist).
    function getInvoice(bytes32 invoiceId) external view returns (Invoice memory invoice) {
        InvoiceRecord storage record = _invoices[invoiceId];
        invoice = Invoice({
            merchant: record.merchant,
            customer: record.customer,
            token: record.token,
            amount: record.amount,
            paid: record.voided ? 0 : record.amount - record.due,
            dueDate: record.dueDate,
            allowPartial: record.allowPartial,
            voided: record.voided
        });
    }

    /// @notice Status of an invoice.
    /// @param invoiceId The invoice.
    /// @return None, Open, PartiallyPaid, Paid or Void.
    function statusOf(bytes32 invoiceId) public view returns (InvoiceStatus) {
        InvoiceRecord storage invoice = _invoices[invoiceId];
        if (invoice.merchant == address(0)) return InvoiceStatus.None;
        if (invoice.voided) return InvoiceStatus.Void;
        uint256 due = invoice.due;
        if (due == invoice.amount) return InvoiceStatus.Open;
        return due == 0 ? InvoiceStatus.Paid : InvoiceStatus.PartiallyPaid;
    }

    /// @notice Whether the invoice is past its due date with something left to pay.
    /// @param invoiceId The invoice.
    /// @return True when overdue.
    function isOverdue(bytes32 invoiceId) external view returns (bool) {
        InvoiceRecord storage invoice = _invoices[invoiceId];
        return invoice.due != 0 && block.timestamp > invoice.dueDate;
    }

    /// @notice What is left to pay, in token base units (0 when paid, void or unknown).
    /// @param invoiceId The invoice.
    /// @return The outstanding amount.
    function amountDue(bytes32 invoiceId) external view returns (uint256) {
        return _invoices[invoiceId].due;
    }

    /// @notice Whether a settler may record off-chain payments for a merchant.
    /// @param merchant The merchant.
    /// @param settler The settler.
    /// @return True when approved.
    function isSettler(address merchant, address settler) external view returns (bool) {
        return _settlers[merchant][settler];
    }

    /// @notice Whether a merchant already used a fiat reference.
    /// @param merchant The merchant.
    /// @param fiatReference The reference.
    /// @return True when used.
    function isFiatReferenceUsed(address merchant, bytes32 fiatReference) external view returns (bool) {
        return _usedFiatReferences[keccak256(abi.encode(merchant, fiatReference))];
    }

    // ------------------------------------------------------------- internals

    function _payToken(address merchant, bytes32 referenceHash, uint256 amount) private {
        bytes32 invoiceId = invoiceIdOf(merchant, referenceHash);
        InvoiceRecord storage invoice = _invoices[invoiceId];
        address token = invoice.token;
        if (token == NATIVE_TOKEN) revert WrongPaymentAsset(invoiceId, token);
        _recordPayment(invoiceId, invoice, amount);
        uint256 fee = _feeOf(amount);
        _collect(IERC20(token), msg.sender, merchant, amount, fee);
        emit InvoicePaid(invoiceId, msg.sender, amount, fee);
    }

    /// @dev Checks a payment or settlement against what is due and books it.
    function _recordPayment(bytes32 invoiceId, InvoiceRecord storage invoice, uint256 amount) private {
        uint256 due = invoice.due;
        if (due == 0) {
            // Off the hot path: tell apart why nothing is due.
            if (invoice.merchant == address(0)) revert InvoiceNotFound(invoiceId);
            if (invoice.voided) revert InvoiceIsVoid(invoiceId);
            revert InvoiceAlreadyPaid(invoiceId);
        }
        if (amount == 0) revert InvalidAmount(amount, due);
        if (amount > due) revert AmountExceedsDue(invoiceId, amount, due);
        if (amount < due && !invoice.allowPartial) revert PartialPaymentNotAllowed(invoiceId, amount, due);
        // amount <= due was checked above.
        unchecked {
            invoice.due = uint96(due - amount);
        }
    }

    function _existing(bytes32 invoiceId) private view returns (InvoiceRecord storage invoice) {
        invoice = _invoices[invoiceId];
        if (invoice.merchant == address(0)) revert InvoiceNotFound(invoiceId);
    }

    function _sendEth(address recipient, uint256 amount) private {
        (bool ok,) = recipient.call{value: amount}("");
        if (!ok) revert EthTransferFailed(recipient, amount);
    }
}
