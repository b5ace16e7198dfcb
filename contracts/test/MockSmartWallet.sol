// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title MockSmartWallet
/// @notice A minimal EIP-1271 contract wallet for tests: one owner key signs for it, and the
/// owner can make it call anything (to approve tokens, for instance).
contract MockSmartWallet is IERC1271 {
    /// @notice The key whose ECDSA signatures the wallet accepts.
    address public immutable owner;

    /// @notice The caller is not the owner.
    /// @param caller The caller.
    error NotOwner(address caller);

    /// @notice A call the wallet made reverted.
    /// @param result The revert data.
    error CallFailed(bytes result);

    /// @param owner_ The signing key.
    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice EIP-1271: valid when `signature` is the owner's ECDSA signature of `hash`.
    /// @param hash The signed digest.
    /// @param signature The signature.
    /// @return The EIP-1271 magic value when valid, 0xffffffff otherwise.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        // The third value only details a malformed signature; `err` alone decides validity here.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(hash, signature);
        return err == ECDSA.RecoverError.NoError && recovered == owner ? this.isValidSignature.selector : bytes4(0xffffffff);
    }

    /// @notice Makes the wallet call `target` with `data` (owner only).
    /// @param target The contract to call.
    /// @param data The calldata.
    /// @return result The call's return data.
    function execute(address target, bytes calldata data) external returns (bytes memory result) {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        bool ok;
        (ok, result) = target.call(data);
        if (!ok) revert CallFailed(result);
    }
}
