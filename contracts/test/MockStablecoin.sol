// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title MockStablecoin
/// @notice A 6-decimal, USDC-like test token with EIP-2612 permit and an open faucet. For
/// local chains and tests only.
contract MockStablecoin is ERC20, ERC20Permit {
    /// @param name_ Token name (also the EIP-712 domain name of its permits).
    /// @param symbol_ Token symbol.
    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) ERC20Permit(name_) {}

    /// @notice Six decimals, like USDC.
    /// @return 6.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mints test tokens to anyone (faucet).
    /// @param to Recipient.
    /// @param amount Amount, in token base units.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
