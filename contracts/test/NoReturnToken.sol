// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title NoReturnToken
/// @notice A USDT-like test token whose `transfer`, `transferFrom` and `approve` return no
/// value and revert on failure. chainbill supports it through SafeERC20.
contract NoReturnToken {
    /// @notice Token name.
    string public constant name = "No Return Token";
    /// @notice Token symbol.
    string public constant symbol = "NORET";
    /// @notice Six decimals, like USDT.
    uint8 public constant decimals = 6;

    /// @notice Total supply, in token base units.
    uint256 public totalSupply;
    /// @notice Balances, in token base units.
    mapping(address => uint256) public balanceOf;
    /// @notice Allowances, in token base units.
    mapping(address => mapping(address => uint256)) public allowance;

    /// @notice ERC-20 Transfer.
    /// @param from Sender.
    /// @param to Recipient.
    /// @param value Amount, in token base units.
    event Transfer(address indexed from, address indexed to, uint256 value);
    /// @notice ERC-20 Approval.
    /// @param owner Owner.
    /// @param spender Spender.
    /// @param value Allowance, in token base units.
    event Approval(address indexed owner, address indexed spender, uint256 value);

    /// @notice Mints test tokens to anyone.
    /// @param to Recipient.
    /// @param amount Amount, in token base units.
    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    /// @notice Approves `spender`; returns nothing.
    /// @param spender Spender.
    /// @param value Allowance, in token base units.
    // USDT-like on purpose: returns nothing, to test that chainbill handles such tokens through SafeERC20.
    // slither-disable-next-line erc20-interface
    function approve(address spender, uint256 value) external {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
    }

    /// @notice Transfers; returns nothing, reverts on failure.
    /// @param to Recipient.
    /// @param value Amount, in token base units.
    // USDT-like on purpose: returns nothing, to test that chainbill handles such tokens through SafeERC20.
    // slither-disable-next-line erc20-interface
    function transfer(address to, uint256 value) external {
        _move(msg.sender, to, value);
    }

    /// @notice Transfers from `from`; returns nothing, reverts on failure.
    /// @param from Payer.
    /// @param to Recipient.
    /// @param value Amount, in token base units.
    // USDT-like on purpose: returns nothing, to test that chainbill handles such tokens through SafeERC20.
    // slither-disable-next-line erc20-interface
    function transferFrom(address from, address to, uint256 value) external {
        uint256 allowed = allowance[from][msg.sender];
        require(allowed >= value, "NoReturnToken: allowance");
        if (allowed != type(uint256).max) allowance[from][msg.sender] = allowed - value;
        _move(from, to, value);
    }

    function _move(address from, address to, uint256 value) private {
        require(balanceOf[from] >= value, "NoReturnToken: balance");
        balanceOf[from] -= value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
