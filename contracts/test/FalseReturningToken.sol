// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title FalseReturningToken
/// @notice A test token that answers a transfer it cannot make with `false` instead of a
/// revert (as some early ERC-20s do). chainbill must treat `false` as a failed payment.
contract FalseReturningToken is ERC20 {
    constructor() ERC20("False Returning Token", "FALSE") {}

    /// @notice Mints test tokens to anyone.
    /// @param to Recipient.
    /// @param amount Amount, in token base units.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Transfers, or returns false when the balance is short.
    /// @param to Recipient.
    /// @param value Amount, in token base units.
    /// @return Whether the transfer happened.
    function transfer(address to, uint256 value) public override returns (bool) {
        if (balanceOf(msg.sender) < value) return false;
        return super.transfer(to, value);
    }

    /// @notice Transfers from `from`, or returns false when the allowance or balance is short.
    /// @param from Payer.
    /// @param to Recipient.
    /// @param value Amount, in token base units.
    /// @return Whether the transfer happened.
    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (allowance(from, msg.sender) < value || balanceOf(from) < value) return false;
        return super.transferFrom(from, to, value);
    }
}
