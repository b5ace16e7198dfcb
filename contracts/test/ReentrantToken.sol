// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken
/// @notice A test token that, during every `transferFrom`, calls back into a target with
/// prepared calldata (an attacker's re-entry). The outcome of that call is recorded rather
/// than bubbled up, so tests can check that chainbill refused it while the outer transfer
/// went through.
contract ReentrantToken is ERC20 {
    address private _target;
    bytes private _payload;
    bool private _armed;

    /// @notice Whether the last re-entry attempt succeeded.
    bool public lastReentrySucceeded;
    /// @notice Revert data (or return data) of the last re-entry attempt.
    bytes public lastReentryResult;
    /// @notice Number of re-entry attempts made.
    uint256 public reentryAttempts;

    constructor() ERC20("Reentrant Token", "REENTER") {}

    /// @notice Mints test tokens to anyone.
    /// @param to Recipient.
    /// @param amount Amount, in token base units.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms the token: the next `transferFrom` calls `target` with `payload`.
    /// @param target Contract to re-enter.
    /// @param payload Calldata of the re-entry.
    function arm(address target, bytes calldata payload) external {
        _target = target;
        _payload = payload;
        _armed = true;
    }

    /// @notice Transfers, after attempting the armed re-entry once.
    /// @param from Payer.
    /// @param to Recipient.
    /// @param value Amount, in token base units.
    /// @return True.
    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (_armed) {
            _armed = false;
            ++reentryAttempts;
            (bool ok, bytes memory result) = _target.call(_payload);
            lastReentrySucceeded = ok;
            lastReentryResult = result;
        }
        return super.transferFrom(from, to, value);
    }
}
