from recbole_flame.config.configurator import Config, parse_cmd_args, parse_value

__all__ = ["Config", "parse_cmd_args", "parse_value"]
