//! The `oodnc` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "oodnc", version, about = "OOD detection and Neural Collapse on CIFAR ResNet-18 (Rust + libtorch)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions, the libtorch path, CUDA availability and thread count.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: oodnc::Result<()> = match cli.command {
        Command::Info { json } => {
            let info = oodnc::info();
            if json {
                match serde_json::to_string_pretty(&info) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                println!("{info}");
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
