// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title Shared events and errors of chainbill's billing contracts
/// @notice Operator approvals, the platform fee and the token-transfer failures that
/// both `SubscriptionManager` and `InvoiceRegistry` report.
interface IBillingBase {
    /// @notice A merchant approved or revoked an operator that may act for it.
    /// @param merchant The merchant granting the approval.
    /// @param operator The address allowed (or no longer allowed) to act for the merchant.
    /// @param approved True when granted, false when revoked.
    event OperatorSet(address indexed merchant, address indexed operator, bool approved);

    /// @notice The platform fee given at deployment is above the hard bound.
    /// @param feeBps The fee asked for, in basis points.
    /// @param maxFeeBps The largest fee allowed, in basis points.
    error FeeTooHigh(uint256 feeBps, uint256 maxFeeBps);

    /// @notice A non-zero platform fee was configured without a recipient.
    error FeeRecipientMissing();

    /// @notice The token address is not usable here (zero, or the native-ETH marker where an
    /// ERC-20 is required).
    /// @param token The rejected token address.
    error InvalidToken(address token);

    /// @notice The caller is neither the merchant nor an operator the merchant approved.
    /// @param merchant The merchant whose authority is required.
    /// @param caller The address that called.
    error NotMerchantOrOperator(address merchant, address caller);

    /// @notice A token transfer out of a payer failed (allowance or balance too low, or the
    /// token refused the transfer).
    /// @param token The token.
    /// @param from The payer.
    /// @param amount The amount, in token base units.
    /// @param allowance The payer's allowance to this contract at the time, in token base units.
    /// @param balance The payer's balance at the time, in token base units.
    error PaymentFailed(address token, address from, uint256 amount, uint256 allowance, uint256 balance);
}
