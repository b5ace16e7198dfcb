// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title FeeOnTransferToken
/// @notice A test token that burns 1% of every transfer, so the recipient receives less than
/// the sender is debited. chainbill books the amount debited from the payer; the merchant
/// receives what the token delivers.
contract FeeOnTransferToken is ERC20 {
    /// @notice Burned share of every transfer, in basis points.
    uint256 public constant FEE_BPS = 100;

    constructor() ERC20("Fee On Transfer Token", "FOT") {}

    /// @notice Mints test tokens to anyone.
    /// @param to Recipient.
    /// @param amount Amount, in token base units.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = (value * FEE_BPS) / 10_000;
        super._update(from, address(0), fee);
        super._update(from, to, value - fee);
    }
}
