// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IBillingBase} from "../interfaces/IBillingBase.sol";

/// @title BillingBase
/// @notice What both billing contracts share: an owner who may pause in an emergency, a
/// platform fee fixed at deployment, merchant-approved operators, and token pulls that only
/// book amounts that arrive in full.
abstract contract BillingBase is IBillingBase, Ownable, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Hard upper bound of the platform fee, in basis points (10%).
    uint256 public constant MAX_FEE_BPS = 1_000;

    uint256 private constant _BPS = 10_000;

    /// @dev Fixed at deployment so that nobody can raise the fee on existing customers.
    uint256 private immutable _feeBps;
    address private immutable _feeRecipient;

    mapping(address merchant => mapping(address operator => bool approved)) private _operators;

    /// @param initialOwner The address allowed to pause and unpause.
    /// @param feeRecipient_ Receives the platform fee (may be zero when `feeBps_` is zero).
    /// @param feeBps_ Platform fee in basis points of every payment, at most `MAX_FEE_BPS`.
    constructor(address initialOwner, address feeRecipient_, uint256 feeBps_) Ownable(initialOwner) {
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_, MAX_FEE_BPS);
        if (feeBps_ != 0 && feeRecipient_ == address(0)) revert FeeRecipientMissing();
        _feeBps = feeBps_;
        _feeRecipient = feeRecipient_;
    }

    /// @notice Emergency stop of what creates obligations or pulls funds without the payer
    /// acting: new plans, subscriptions, charges, invoices and off-chain settlements. Cancels,
    /// voids, refunds and a payer's own invoice payments stay open.
    function pause() external onlyOwner {
        _pause();
    }

    /// @notice Lifts an emergency pause.
    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Approves or revokes an operator that may act for the calling merchant.
    /// @param operator The address to approve or revoke.
    /// @param approved True to approve, false to revoke.
    function setOperator(address operator, bool approved) external {
        _operators[msg.sender][operator] = approved;
        emit OperatorSet(msg.sender, operator, approved);
    }

    /// @notice Whether `operator` may act for `merchant`.
    /// @param merchant The merchant.
    /// @param operator The address to check.
    /// @return True when approved.
    function isOperator(address merchant, address operator) external view returns (bool) {
        return _operators[merchant][operator];
    }

    /// @notice The platform fee, in basis points, and its recipient (both fixed at deployment).
    /// @return feeBps The fee in basis points.
    /// @return recipient The fee recipient.
    function platformFee() external view returns (uint256 feeBps, address recipient) {
        return (_feeBps, _feeRecipient);
    }

    function _requireMerchantOrOperator(address merchant) internal view {
        if (!_isMerchantOrOperator(merchant, msg.sender)) revert NotMerchantOrOperator(merchant, msg.sender);
    }

    function _isMerchantOrOperator(address merchant, address caller) internal view returns (bool) {
        return caller == merchant || _operators[merchant][caller];
    }

    function _feeOf(uint256 amount) internal view returns (uint256) {
        return (amount * _feeBps) / _BPS;
    }

    function _feeRecipientAddress() internal view returns (address) {
        return _feeRecipient;
    }

    /// @dev Moves `amount` from `from` to `merchant`, less the platform `fee`, which goes to
    /// the fee recipient. Returns false, moving nothing, when the payer's allowance or balance
    /// is short or the token refuses. Amounts booked are amounts debited from the payer: with
    /// a fee-on-transfer token the merchant receives what the token delivers.
    function _tryCollect(IERC20 token, address from, address merchant, uint256 amount, uint256 fee)
        internal
        returns (bool)
    {
        if (fee == 0) return token.trySafeTransferFrom(from, merchant, amount);
        // Two transfers must both succeed or neither be attempted: check up front that the
        // allowance and balance cover the whole amount. A token that still refuses after this
        // check is broken, and the whole transaction reverts.
        if (token.allowance(from, address(this)) < amount || token.balanceOf(from) < amount) return false;
        _transferOrRevert(token, from, _feeRecipient, fee);
        _transferOrRevert(token, from, merchant, amount - fee);
        return true;
    }

    /// @dev Like `_tryCollect`, but a payment that cannot be collected reverts with
    /// `PaymentFailed`, carrying the whole amount and the payer's allowance and balance.
    function _collect(IERC20 token, address from, address merchant, uint256 amount, uint256 fee) internal {
        if (!_tryCollect(token, from, merchant, amount, fee)) {
            revert PaymentFailed(
                address(token), from, amount, token.allowance(from, address(this)), token.balanceOf(from)
            );
        }
    }

    /// @dev For the second of two transfers whose allowance and balance were checked up front:
    /// failing here means the token broke its own word, and the whole transaction reverts.
    function _transferOrRevert(IERC20 token, address from, address to, uint256 amount) private {
        if (!token.trySafeTransferFrom(from, to, amount)) {
            revert PaymentFailed(
                address(token), from, amount, token.allowance(from, address(this)), token.balanceOf(from)
            );
        }
    }

    /// @dev Applies an EIP-2612 permit if one is given. A permit that fails (for instance
    /// because it was front-run and already used) is ignored: the transfer that follows
    /// reverts on its own if the allowance is not there.
    function _tryPermit(IERC20 token, address owner, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        internal
    {
        try IERC20Permit(address(token)).permit(owner, address(this), value, deadline, v, r, s) {} catch {}
    }
}
