//! Every flag and subcommand of a command line says what it is for.

/// The flags, arguments and subcommands of `command` (and below) without help text, each
/// as its path of subcommands and its name.
pub fn undocumented(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    walk(command, command.get_name(), &mut missing);
    missing
}

fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let generated = matches!(arg.get_id().as_str(), "help" | "version");
        if !generated && !arg.is_hide_set() && arg.get_help().is_none() {
            missing.push(format!("{path} --{}", arg.get_id()));
        }
    }
    for sub in command.get_subcommands() {
        let path = format!("{path} {}", sub.get_name());
        if sub.get_name() != "help" && sub.get_about().is_none() {
            missing.push(path.clone());
        }
        walk(sub, &path, missing);
    }
}
